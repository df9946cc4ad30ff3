//! The concurrency sweep: N create+exec+delete cycles at once, from a full
//! pool, at least five samples per level; each sample records the boot
//! paths its creates took.

use std::time::Instant;

use futures::future::join_all;

use super::daemon::{create_request, Daemon};
use super::report::{path_mix, Report};

pub(super) const LEVELS: [usize; 4] = [1, 2, 4, 8];

pub(super) fn name(level: usize) -> String {
    format!("concurrency {level}: create+exec+delete, wall")
}

pub(super) async fn sweep(
    daemon: &Daemon,
    report: &mut Report,
    samples: usize,
    pool_size: usize,
) -> anyhow::Result<()> {
    for level in LEVELS {
        eprintln!("bench: concurrency {level} ({samples} samples)");
        for _ in 0..samples {
            daemon.wait_for_pools(pool_size).await?;
            let started = Instant::now();
            let cycles = (0..level).map(|_| async move {
                let sandbox = daemon.create(&create_request("python")).await?;
                let exec = daemon.exec_42(&sandbox.id, "python").await;
                daemon.client.delete_sandbox(&sandbox.id).await?;
                exec.map(|()| sandbox.boot_path)
            });
            let paths = join_all(cycles)
                .await
                .into_iter()
                .collect::<anyhow::Result<Vec<String>>>()?;
            let wall = started.elapsed();
            report.add(
                &name(level),
                wall,
                &path_mix(paths.iter().map(String::as_str)),
            );
        }
    }
    Ok(())
}
