//! The statistics `emberctl bench` prints: percentiles of samples and the
//! slope of a series. Pure functions, no I/O.

/// Fewest samples a median (or p95) is printed for.
pub(super) const MIN_SAMPLES: usize = 5;

/// The `p` quantile (0.0–1.0) by nearest rank; NaN when there are no samples.
pub(super) fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((sorted.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    sorted[rank]
}

pub(super) fn median(samples: &[f64]) -> f64 {
    percentile(samples, 0.5)
}

/// The least-squares slope of `y` over `x` (units of y per unit of x);
/// NaN with fewer than two distinct `x`.
pub(super) fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return f64::NAN;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return f64::NAN;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    sxy / sxx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_of_the_sorted_samples() {
        let samples = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(median(&samples), 3.0);
        assert_eq!(percentile(&samples, 0.0), 1.0);
        assert_eq!(percentile(&samples, 0.95), 5.0);
        assert_eq!(percentile(&samples, 1.0), 5.0);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
        // Twenty samples: p95 is the 19th of 20 (rank round(19 × 0.95) = 18).
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 0.95), 19.0);
    }

    #[test]
    fn the_slope_is_the_least_squares_fit() {
        let flat = [(0.0, 3.0), (1.0, 3.0), (2.0, 3.0)];
        assert_eq!(slope(&flat), 0.0);
        let rising = [(100.0, 10.0), (200.0, 12.0), (300.0, 14.0)];
        assert!((slope(&rising) - 0.02).abs() < 1e-12);
        // Noise around a line keeps the line's slope.
        let noisy = [(0.0, 1.0), (1.0, 0.0), (2.0, 3.0), (3.0, 2.0)];
        assert!((slope(&noisy) - 0.6).abs() < 1e-12);
        assert!(slope(&[(1.0, 2.0)]).is_nan());
        assert!(slope(&[(1.0, 2.0), (1.0, 5.0)]).is_nan());
    }
}
