//! Memory the gateway hands back to the kernel once it has started.
//!
//! Starting up runs a lot of code only once (flag and YAML parsing, component and listener
//! set-up, TLS and QUIC configuration), and the kernel maps the executable in 64 KiB windows
//! around every page it runs ("fault-around"), so a freshly started edgecar has most of its
//! 12 MB of machine code resident: about 9 of its 12 MiB of idle RSS on x86_64
//! (docs/benchmarks.md). None of it is needed again until a request runs it.
//!
//! [`release_after`] (spawned by `run` once the gateway serves, so that the tasks it started
//! have run their own set-up too) calls [`release_start_up_code`], which asks the kernel (`madvise(MADV_PAGEOUT)`, Linux 5.4+) to reclaim
//! the executable's clean, read-only pages. It is a hint whose contents are kept by
//! construction: those pages are identical to the file, so what runs again is read back from
//! the page cache or the disk on its next use (a few hundred page faults when the first
//! requests arrive, once). Mappings holding pages of their own (the relocated RELRO data) are
//! left alone, and so are shared libraries: their pages are shared with other processes, and
//! dropping this process's mappings of them would change only what RSS counts, not what the
//! machine holds.
//!
//! This module is the crate's one exception to its ban on `unsafe`: `madvise` takes a raw
//! address range, which is read from `/proc/self/smaps` and belongs to the running program.

#![allow(unsafe_code)]

use std::path::Path;
use std::time::Duration;

/// How long after the gateway is ready its start-up code is handed back: the tasks started
/// with it (listeners, the subscription manager, watchers) set themselves up within a fraction
/// of a second on x86_64 (docs/benchmarks.md); a slow board gets ten times that.
pub const START_UP_SETTLE: Duration = Duration::from_secs(2);

/// Waits `after`, then [`release_start_up_code`] off the async threads (it reads
/// `/proc/self/smaps`).
pub async fn release_after(after: Duration) {
    tokio::time::sleep(after).await;
    let _ = tokio::task::spawn_blocking(release_start_up_code).await;
}

/// What [`release_start_up_code`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Mappings the kernel was asked to reclaim.
    pub mappings: usize,
    /// Bytes resident in them before the call.
    pub resident_bytes: u64,
}

/// Why nothing could be released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// `/proc/self/smaps` or `/proc/self/exe` could not be read (not Linux, or no `/proc`).
    #[error("cannot read the process's mappings: {0}")]
    Proc(#[from] std::io::Error),
    /// The kernel refused the advice (before Linux 5.4, `MADV_PAGEOUT` does not exist).
    #[error("madvise(MADV_PAGEOUT): {0}")]
    Madvise(rustix::io::Errno),
}

/// One mapping of `/proc/self/smaps`, as far as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    path: String,
    rss_kb: u64,
    anonymous_kb: u64,
}

/// Parses the mappings of an smaps text; lines it does not know are skipped.
fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or("");
            // offset, device, inode, then the path (which may contain spaces).
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            out.push(Mapping {
                start,
                end,
                writable: perms.contains('w'),
                path,
                rss_kb: 0,
                anonymous_kb: 0,
            });
            continue;
        }
        let mut kb = || {
            fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match (first, out.last_mut()) {
            ("Rss:", Some(m)) => m.rss_kb = kb(),
            ("Anonymous:", Some(m)) => m.anonymous_kb = kb(),
            _ => {}
        }
    }
    out
}

/// The mappings of `exe` that may be reclaimed: read-only, and every page still the file's.
fn reclaimable<'a>(all: &'a [Mapping], exe: &str) -> impl Iterator<Item = &'a Mapping> {
    all.iter()
        .filter(move |m| m.path == exe && !m.writable && m.anonymous_kb == 0 && m.rss_kb > 0)
}

/// Asks the kernel to reclaim the executable's clean, read-only pages (see the module doc), and
/// logs what it did at debug level. Call it once start-up is over; calling it again later is
/// harmless.
pub fn release_start_up_code() -> Result<Released, ReleaseError> {
    let released = std::fs::read_link("/proc/self/exe")
        .and_then(|exe| Ok((std::fs::read_to_string("/proc/self/smaps")?, exe)))
        .map_err(ReleaseError::from)
        .and_then(|(smaps, exe)| release_in(&smaps, &exe));
    match &released {
        Ok(r) => tracing::debug!(
            mappings = r.mappings,
            resident_bytes = r.resident_bytes,
            "start-up code handed back to the kernel"
        ),
        Err(e) => tracing::debug!(error = %e, "start-up code not handed back"),
    }
    released
}

fn release_in(smaps: &str, exe: &Path) -> Result<Released, ReleaseError> {
    let exe = exe.to_string_lossy();
    let all = mappings(smaps);
    let mut released = Released::default();
    for m in reclaimable(&all, &exe) {
        // SAFETY: the range is a whole mapping of this process, read from /proc/self/smaps
        // just now: mapped, page-aligned, and not unmapped since (nothing here unmaps code).
        // MADV_PAGEOUT only reclaims; the contents seen afterwards are unchanged, and these
        // pages are read-only and identical to the file, so reading them back yields the same
        // bytes. No Rust reference to the memory is created.
        let advised = unsafe {
            rustix::mm::madvise(
                m.start as *mut std::ffi::c_void,
                m.end - m.start,
                rustix::mm::Advice::LinuxPageOut,
            )
        };
        advised.map_err(ReleaseError::Madvise)?;
        released.mappings += 1;
        released.resident_bytes += m.rss_kb * 1024;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5581c0a00000-5581c0ce1000 r--p 00000000 fe:00 1234                       /usr/bin/edgecar
Size:               2948 kB
Rss:                1344 kB
Anonymous:             0 kB
5581c0ce1000-5581c195a000 r-xp 002e0000 fe:00 1234                       /usr/bin/edgecar
Size:              12772 kB
Rss:                7604 kB
Anonymous:             0 kB
5581c195a000-5581c19a6000 r--p 00f58000 fe:00 1234                       /usr/bin/edgecar
Size:                304 kB
Rss:                 304 kB
Anonymous:           304 kB
5581c19a6000-5581c19ac000 rw-p 00fa3000 fe:00 1234                       /usr/bin/edgecar
Size:                 24 kB
Rss:                  24 kB
Anonymous:            24 kB
7f00eb57000-7f00eb5b000 r-xp 00028000 fe:00 99                           /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1368 kB
Rss:                1016 kB
Anonymous:             0 kB
7ffd3e19d000-7ffd3e1be000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  96 kB
Anonymous:            96 kB
VmFlags: rd wr mr mw me gd ac
";

    #[test]
    fn only_the_executable_s_clean_read_only_mappings_are_reclaimed() {
        let all = mappings(SMAPS);
        assert_eq!(all.len(), 6);
        let picked: Vec<(usize, u64)> = reclaimable(&all, "/usr/bin/edgecar")
            .map(|m| (m.start, m.rss_kb))
            .collect();
        // Not the relocated RELRO data (its own pages), not .data, not libc, not the stack.
        assert_eq!(picked, [(0x5581c0a00000, 1344), (0x5581c0ce1000, 7604)]);
    }

    #[test]
    fn paths_with_spaces_and_replaced_binaries_are_read_whole() {
        let all = mappings(
            "00400000-00452000 r-xp 00000000 08:02 173521      /opt/my apps/edgecar (deleted)\nRss: 8 kB\n",
        );
        assert_eq!(all[0].path, "/opt/my apps/edgecar (deleted)");
        assert_eq!(all[0].rss_kb, 8);
    }

    #[test]
    fn the_running_test_binary_gives_its_code_back_and_keeps_running() {
        let released = release_start_up_code().expect("Linux 5.4 or later with /proc");
        assert!(released.mappings >= 1, "{released:?}");
        assert!(released.resident_bytes > 0, "{released:?}");
        // Code paged out is read back when it runs again.
        assert_eq!(mappings(SMAPS).len(), 6);
    }
}
