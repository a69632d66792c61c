//! How framewise starts its worker processes (the local autoscaler's, the per-GPU children of a
//! worker): tied to the parent's life, and drainable with SIGINT whatever the parent inherited.

use std::process::Command;

/// Sets up `cmd` so the child gets SIGTERM (and drains, as on a stop) when the thread that
/// started it ends, even by SIGKILL, or already has between fork and exec; and so SIGINT, the
/// drain signal, has its default action: a parent started with `&` from a script ignores
/// SIGINT, and a child inheriting that could not be drained (a shell cannot even trap it).
#[cfg(target_os = "linux")]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, signal, getppid and raise are async-signal-safe and nothing here
    // allocates; they touch only the child being started.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            // The parent died between fork and prctl.
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
}

/// Elsewhere: nothing (the worker fleet runs on Linux).
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_: &mut Command) {}
