//! The `framewise` binary: the command line only; the work happens in the
//! coordinator and worker crates.

mod blob;
#[cfg(feature = "worker")]
mod children;
mod cli;
mod client;
#[cfg(feature = "worker")]
mod local;
mod telemetry;

use anyhow::Result;
use clap::Parser;
use cli::{Cli, Command};
use framewise_common::config::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Caps glibc's malloc arenas at two. With its default (8 per core) every decoder, encoder
/// and inference thread that frees 2.7 MB frames on another thread's arena grows its own,
/// and a worker's memory grew with the clip: peak RSS 473 MB on a 1-minute 720p clip, 679 MB
/// on a 10-minute one; with two arenas 416 MB and 436 MB, no slower (BENCHMARKS.md).
/// A `MALLOC_ARENA_MAX` in the environment (which glibc reads itself) is left as set, so the
/// cap can be measured against on a many-GPU worker, where 16 pipelines share the two arenas.
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; called first thing in main, before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // User commands print one summary or one error line; servers log what they do.
    let server = matches!(
        cli.command,
        Command::Coordinator { .. } | Command::Worker { .. }
    );
    let service = match cli.command {
        Command::Coordinator { .. } => "framewise-coordinator",
        Command::Worker { .. } => "framewise-worker",
        _ => "framewise",
    };
    let loads_media = matches!(cli.command, Command::Worker { .. }) || is_run(&cli.command);
    let telemetry = telemetry::init(if server { "info" } else { "error" }, service);
    let code = match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Flushes the traces still buffered.
    drop(telemetry);
    if loads_media {
        end_without_teardown(code);
    }
    code
}

/// Ctrl-C or SIGTERM (systemd, docker stop, a scale set stopping the VM, a supervisor's
/// death): what every long-running command stops and drains on.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(feature = "worker")]
fn is_run(c: &Command) -> bool {
    matches!(c, Command::Run(_))
}

#[cfg(not(feature = "worker"))]
fn is_run(_: &Command) -> bool {
    false
}

/// Ends a `run` or `worker` process once its work is written and reported, without the C and
/// C++ teardown at exit: twice on the GPU node (session 8, a single-GPU `framewise worker`
/// after its drain; session 9, a single-GPU `framewise run` after it printed its result) the
/// process then died of a segmentation fault, so a job that had succeeded exited with 139.
/// Every output file is closed and renamed, the temporary directories removed and the worker
/// threads joined (or given up on) before this; the kernel frees the rest.
fn end_without_teardown(code: ExitCode) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let status = if code == ExitCode::SUCCESS { 0 } else { 1 };
    // SAFETY: _exit ends the process at once; nothing after it runs, and what it skips (atexit
    // handlers, C++ static destructors of ONNX Runtime, CUDA and GStreamer) holds no data of ours.
    unsafe { libc::_exit(status) }
}

/// The config file to use: the one given, else `fallback` if it exists, else built-in defaults.
pub(crate) fn load_config(given: Option<&Path>, fallback: &str) -> Result<Config> {
    let path: Option<PathBuf> = given
        .map(Path::to_path_buf)
        .or_else(|| Some(PathBuf::from(fallback)).filter(|p| p.is_file()));
    Ok(Config::load(path.as_deref())?)
}

fn dispatch(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Coordinator { config } => {
            let cfg = load_config(Some(&config), "")?;
            let c = framewise_coordinator::start(&cfg.coordinator, &cfg.storage)?;
            eprintln!("framewise coordinator listening on {}", c.url());
            // Ctrl-C or SIGTERM (systemd, docker stop): stop serving, let the actors finish and
            // sled flush, then exit (a SIGKILL is survived too: the state is crash-safe).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(shutdown_signal());
            eprintln!("framewise coordinator: stopping");
            c.shutdown();
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(a) => client::submit(a),
        Command::Status {
            job,
            coordinator,
            token,
            ca_file,
        } => client::status(
            &coordinator,
            job.as_deref(),
            &client::Auth::new(token, ca_file),
        ),
        Command::Cancel {
            job,
            coordinator,
            token,
            ca_file,
        } => client::cancel(&coordinator, &job, &client::Auth::new(token, ca_file)),
        Command::Storage { config, command } => blob::run(config.as_deref(), command),
        #[cfg(feature = "worker")]
        Command::Run(a) => local::run(a),
        #[cfg(feature = "worker")]
        Command::Worker {
            config,
            coordinator,
            device,
            gpus,
            worker_id,
        } => local::worker(&config, coordinator, device, gpus, worker_id),
        #[cfg(feature = "worker")]
        Command::BenchModel(a) => local::bench_model(a),
        #[cfg(feature = "worker")]
        Command::BenchMedia(a) => local::bench_media(a),
        #[cfg(feature = "worker")]
        Command::OptimizeModel(a) => local::optimize_model(a),
        #[cfg(feature = "worker")]
        Command::Styles { config } => local::styles(config.as_deref()),
        #[cfg(not(feature = "worker"))]
        _ => anyhow::bail!(
            "this framewise binary was built without the worker feature (GStreamer, ONNX Runtime)"
        ),
    }
}
