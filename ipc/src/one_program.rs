//! One-program mode, as `mpiexec -n N python -m mpi4py.futures`: every
//! task of `srun -n N prog` (or `mpirun -np N prog`) runs the same
//! program; rank 0 is the master, the others join it as remote workers.
//!
//! Opt-in, so that a program merely run under `srun` is never taken over:
//! it applies only when [`ONE_PROGRAM_ENV`] is set, to the directory where
//! the master leaves its address (a directory all nodes share; empty or
//! `.` means the current one). The rank comes from `SLURM_PROCID`,
//! `OMPI_COMM_WORLD_RANK` or `PMIX_RANK`, the size from `SLURM_NTASKS`,
//! `OMPI_COMM_WORLD_SIZE` or `PMIX_SIZE`.
//!
//! The rendezvous file, `procpool-<job>.addr` (the job from
//! `SLURM_JOB_ID.SLURM_STEP_ID`, else `PROCPOOL_ONE_PROGRAM_ID`, else
//! `default`), holds the master's `host:port` and the hex key on two
//! lines. The master writes it atomically (a private temporary file, then
//! a rename), readable by its user only, and removes it when its pool
//! stops; workers wait for it with a growing pause.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Set to a shared directory to opt in to one-program mode.
pub const ONE_PROGRAM_ENV: &str = "PROCPOOL_ONE_PROGRAM";

/// This process's place in a one-program run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneProgram {
    /// 0 for the master.
    pub rank: usize,
    /// How many processes run the program (the master included).
    pub size: usize,
    /// Where the master's address is left for the workers.
    pub file: PathBuf,
}

impl OneProgram {
    /// The workers the master should wait for.
    pub fn workers(&self) -> usize {
        self.size.saturating_sub(1)
    }

    /// Whether this process is the master.
    pub fn is_master(&self) -> bool {
        self.rank == 0
    }
}

fn first_var(names: &[&str]) -> Option<usize> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok()?.trim().parse().ok())
}

/// This process's role, when one-program mode is asked for and a launcher
/// gave it a rank; `None` otherwise.
pub fn detect() -> Option<OneProgram> {
    let dir = std::env::var_os(ONE_PROGRAM_ENV)?;
    let rank = first_var(&["SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"])?;
    let size = first_var(&["SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"])
        .unwrap_or(rank + 1)
        .max(rank + 1);
    let dir = if dir.is_empty() {
        PathBuf::from(".")
    } else {
        PathBuf::from(dir)
    };
    let job = match (
        std::env::var("SLURM_JOB_ID"),
        std::env::var("SLURM_STEP_ID"),
    ) {
        (Ok(job), Ok(step)) => format!("{job}.{step}"),
        (Ok(job), Err(_)) => job,
        _ => std::env::var("PROCPOOL_ONE_PROGRAM_ID").unwrap_or_else(|_| "default".into()),
    };
    Some(OneProgram {
        rank,
        size,
        file: dir.join(format!("procpool-{job}.addr")),
    })
}

/// The master's side: leaves `addr` and `key` in `file`, atomically.
///
/// # Errors
/// The file cannot be written.
pub fn publish(file: &Path, addr: &str, key: &[u8]) -> io::Result<()> {
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let contents = format!("{addr}\n{}\n", crate::remote::hex(key));
    crate::sys::write_private(&tmp, contents.as_bytes())?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A worker's side: waits (a growing pause, up to 1 s) until `file`
/// exists, at most until `deadline`; the master's address and key.
///
/// # Errors
/// [`io::ErrorKind::TimedOut`] when the file did not appear in time;
/// [`io::ErrorKind::InvalidData`] when it is not what the master writes.
pub fn rendezvous(file: &Path, deadline: Instant) -> io::Result<(String, Vec<u8>)> {
    let mut pause = Duration::from_millis(10);
    loop {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let mut lines = text.lines();
                let addr = lines.next().filter(|a| !a.is_empty());
                let key = lines.next().and_then(crate::remote::unhex);
                return match (addr, key) {
                    (Some(addr), Some(key)) => Ok((addr.to_owned(), key)),
                    _ => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is not a procpool rendezvous file", file.display()),
                    )),
                };
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the master did not write {} in time", file.display()),
                    ));
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_rendezvous() {
        let dir = std::env::temp_dir().join(format!("procpool-one-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("procpool-test.addr");
        let missing = rendezvous(&file, Instant::now() + Duration::from_millis(30)).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::TimedOut);
        publish(&file, "vm:1234", b"0123456789abcdef").unwrap();
        let (addr, key) = rendezvous(&file, Instant::now()).unwrap();
        assert_eq!(
            (addr.as_str(), key.as_slice()),
            ("vm:1234", &b"0123456789abcdef"[..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
