//! The interactive figures of `emberctl bench` (what each one measures is
//! in `docs/performance.md`, "Interactive figures"): first-byte latency of a
//! streamed exec, process start latency, and file upload and download
//! throughput for 1 MiB and 100 MiB with every download's sha256 checked.
//! Runs in one sandbox of its own (512 MiB of memory and of disk, so that
//! 100 MiB fits), deleted at the end.

use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use emberd_api::{CreateSandboxRequest, ExecRequest, ProcessState, StartProcessRequest};
use emberd_client::{Client, ExecEvent, PutOptions, UploadBody};
use sha2::{Digest as _, Sha256};

use super::daemon::Daemon;
use super::report::{print_table, Report};
use super::{provenance, BenchArgs};

/// Prints at once, then keeps the exec open: the first byte cannot wait for the end.
const PRINT_THEN_SLEEP: &str = "import time\nprint('ready', flush=True)\ntime.sleep(0.5)";
const FIRST_BYTE: &str = "streamed exec: request to first stdout event (prints, then sleeps 0.5 s)";
const STREAM_EXIT: &str = "streamed exec: request to exit event (same program)";
const UNARY: &str = "unary exec of the same program: request to answer";
const PROCESS_START: &str = "process start: POST /processes to 201 (`true`)";

/// A transfer size and how many samples it gets at least.
struct Size {
    label: &'static str,
    bytes: u64,
    min_samples: usize,
    max_samples: usize,
}

const SIZES: [Size; 2] = [
    Size {
        label: "1 MiB",
        bytes: 1 << 20,
        min_samples: 5,
        max_samples: 20,
    },
    Size {
        label: "100 MiB",
        bytes: 100 << 20,
        min_samples: 5,
        max_samples: 5,
    },
];

fn upload_name(label: &str) -> String {
    format!("upload {label}: PUT to 201")
}

fn download_name(label: &str) -> String {
    format!("download {label}: GET to last byte")
}

/// `emberctl bench --only-interactive`: these figures alone, in a daemon of
/// the default configuration (pools and snapshots on).
pub(super) async fn run_alone(args: &BenchArgs) -> anyhow::Result<()> {
    let mut report = Report::default();
    let size = args.pool_size.to_string();
    let daemon = Daemon::start(args, &["--pool-size", &size, "--snapshots", "true"])?;
    provenance(&mut report, &daemon.client).await?;
    run(&daemon.client, &mut report, args.samples()).await?;
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// Measures everything in a sandbox of its own; `samples` is the bench's
/// `--samples` (each figure takes at least the minimum the docs promise).
pub(super) async fn run(
    client: &Client,
    report: &mut Report,
    samples: usize,
) -> anyhow::Result<()> {
    let id = client
        .create_sandbox_with(&CreateSandboxRequest {
            language_pack: Some("python".into()),
            memory_mib: Some(512),
            disk_mib: Some(512),
            ..CreateSandboxRequest::default()
        })
        .await?;
    let result = async {
        let path = client
            .get_sandbox(&id)
            .await?
            .boot_path
            .context("the sandbox's info has no boot_path")?;
        measure(client, &id, &path, report, samples).await
    }
    .await;
    let deleted = client.delete_sandbox(&id).await;
    result?;
    deleted?;
    Ok(())
}

async fn measure(
    client: &Client,
    id: &str,
    path: &str,
    report: &mut Report,
    samples: usize,
) -> anyhow::Result<()> {
    let n = samples.max(5);
    eprintln!("bench: streamed exec first byte ({n} samples)");
    let unary = ExecRequest {
        code: PRINT_THEN_SLEEP.into(),
        ..ExecRequest::default()
    };
    for _ in 0..n {
        let (first, exit) = first_byte(client, id).await?;
        report.add(FIRST_BYTE, first, path);
        report.add(STREAM_EXIT, exit, path);
        // The same program without streaming, alternated with the streamed
        // one so that both meet the same sandbox state.
        let started = Instant::now();
        let answer = client.exec(id, &unary).await?;
        report.add(UNARY, started.elapsed(), path);
        anyhow::ensure!(answer.exit_code == 0, "the program exited with {answer:?}");
    }

    eprintln!("bench: process start ({n} samples)");
    for _ in 0..n {
        let request = StartProcessRequest {
            cmd: Some(vec!["true".into()]),
            ..StartProcessRequest::default()
        };
        let started = Instant::now();
        let pid = client.start_process(id, &request).await?;
        report.add(PROCESS_START, started.elapsed(), path);
        wait_for_end(client, id, pid).await?;
    }

    let mut checked = 0;
    for size in &SIZES {
        let n = samples.clamp(size.min_samples, size.max_samples);
        eprintln!("bench: upload and download of {} ({n} samples)", size.label);
        let (file, digest) = random_file(size.bytes)?;
        for sample in 0..n {
            // A new file each time, removed after: the guest's writable layer
            // is memory, and a replace holds old and new at once.
            let remote = format!("/tmp/emberd-bench-{}-{sample}", size.bytes);
            let body = UploadBody::from_file(file.path()).await?;
            let started = Instant::now();
            let written = client
                .put_file(id, &remote, body, &PutOptions::default())
                .await?;
            report.add(&upload_name(size.label), started.elapsed(), path);
            anyhow::ensure!(
                written.bytes == size.bytes,
                "the upload wrote {} bytes",
                written.bytes
            );

            let started = Instant::now();
            let download = client.get_file(id, &remote).await?;
            let mut sink = HashSink::default();
            let got = download.write_to(&mut sink, None).await?;
            report.add(&download_name(size.label), started.elapsed(), path);
            anyhow::ensure!(got == size.bytes, "the download was {got} bytes");
            anyhow::ensure!(
                sink.hex() == digest,
                "the sha256 of the {} download differs from the upload's",
                size.label
            );
            checked += 1;
            client.delete_file(id, &remote, false).await?;
        }
        for (name, figure) in [
            (
                upload_name(size.label),
                format!("upload {} (MB/s, from the median)", size.label),
            ),
            (
                download_name(size.label),
                format!("download {} (MB/s, from the median)", size.label),
            ),
        ] {
            let seconds = super::stats::median(
                &report.latencies_ms[&name]
                    .iter()
                    .map(|s| s.value)
                    .collect::<Vec<_>>(),
            ) / 1000.0;
            report
                .figures
                .insert(figure, size.bytes as f64 / 1e6 / seconds);
        }
    }
    report.check(
        "transfers: sha256 of each download equals the upload's",
        true,
        format!("equal in {checked} of {checked}"),
    );
    Ok(())
}

/// One streamed exec of [`PRINT_THEN_SLEEP`]: the time to its first stdout
/// event and to its exit event, both from just before the request.
async fn first_byte(client: &Client, id: &str) -> anyhow::Result<(Duration, Duration)> {
    let request = ExecRequest {
        code: PRINT_THEN_SLEEP.into(),
        ..ExecRequest::default()
    };
    let started = Instant::now();
    let mut stream = client.exec_stream(id, &request).await?;
    let mut first = None;
    while let Some(event) = stream.next().await {
        match event? {
            ExecEvent::Stdout(_) => {
                first.get_or_insert_with(|| started.elapsed());
            }
            ExecEvent::Stderr(_) => {}
            ExecEvent::Exit(exit) => {
                let total = started.elapsed();
                anyhow::ensure!(exit.exit_code == 0, "the program exited with {exit:?}");
                let first = first.context("the exec printed nothing")?;
                return Ok((first, total));
            }
        }
    }
    anyhow::bail!("the stream ended without an exit event")
}

/// Waits until process `pid` is no longer running, so that samples do not overlap.
async fn wait_for_end(client: &Client, id: &str, pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get_process(id, pid).await?.state == ProcessState::Running {
        anyhow::ensure!(Instant::now() < deadline, "process {pid} never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A temporary file of `len` pseudo-random bytes and their sha256 in hex.
fn random_file(len: u64) -> anyhow::Result<(tempfile::NamedTempFile, String)> {
    let mut file = tempfile::NamedTempFile::new()?;
    let mut hasher = Sha256::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            // xorshift64: incompressible enough, and the same for every run.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    file.flush()?;
    Ok((file, format!("{:x}", hasher.finalize())))
}

/// An `AsyncWrite` that only hashes: a download's time without a disk's.
#[derive(Default)]
struct HashSink(Sha256);

impl HashSink {
    fn hex(self) -> String {
        format!("{:x}", self.0.finalize())
    }
}

impl tokio::io::AsyncWrite for HashSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.update(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn the_random_file_and_the_sink_agree_on_the_digest() {
        let (file, digest) = random_file(3 * 1024 * 1024 + 5).unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        assert_eq!(bytes.len(), 3 * 1024 * 1024 + 5);
        let mut sink = HashSink::default();
        for chunk in bytes.chunks(70_000) {
            sink.write_all(chunk).await.unwrap();
        }
        assert_eq!(sink.hex(), digest);
        // Not a run of zeros: the figure must not depend on compression.
        assert!(bytes.iter().filter(|b| **b == 0).count() < bytes.len() / 100);
    }
}
