//! Shared benchmark pieces: the bare hyper echo server every benchmark measures as its floor, a
//! fixed-concurrency HTTP/1.1 keep-alive load generator that reports ops/s and percentiles, and
//! what `/proc` says about a server process (memory, CPU time).

use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The argument that turns a benchmark binary into the echo server (see [`spawn_echo`]).
const ECHO_ARG: &str = "echo-server";

/// Call first in a benchmark's `main`: when the process was started as the echo server, serve
/// forever and never return.
pub fn serve_echo_if_asked() {
    if std::env::args().nth(1).as_deref() != Some(ECHO_ARG) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", listener.local_addr().expect("addr").port());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    std::process::exit(0);
}

/// Starts this benchmark binary again as a bare hyper echo server (the floor, in its own process
/// like edgecar); returns the child and its port.
pub fn spawn_echo() -> (Child, u16) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg(ECHO_ARG)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn echo server");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("port");
    (child, line.trim().parse().expect("echo port"))
}

/// Result of one load run.
pub struct Stats {
    /// Successful requests per second.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// Non-2xx answers and broken connections.
    pub errors: u64,
}

/// `concurrency` keep-alive connections send `method path` with `body` back to back for `secs`.
pub async fn load(
    port: u16,
    method: &'static str,
    path: &'static str,
    body: &'static str,
    concurrency: usize,
    secs: f64,
) -> Stats {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .expect("request");
                let t = Instant::now();
                match tx.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if ok {
                            lat.push(t.elapsed().as_micros() as u64);
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors)
        }));
    }
    summarize(tasks, started).await
}

/// Gathers the latencies (µs) and error counts of load tasks started at `started` into
/// throughput and percentiles.
pub async fn summarize(
    tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, u64)>>,
    started: std::time::Instant,
) -> Stats {
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("task");
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Stats {
        ops_per_sec: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

/// Prints one markdown table row.
pub fn row(name: &str, s: &Stats) {
    println!(
        "| {name:<34} | {:>10.0} | {:>7} | {:>7} | {:>6} |",
        s.ops_per_sec, s.p50_us, s.p99_us, s.errors
    );
}

/// Prints the table header matching [`row`].
pub fn header() {
    println!("| scenario                           |      ops/s | p50 µs  | p99 µs  | errors |");
    println!("|------------------------------------|-----------:|--------:|--------:|-------:|");
}

/// A `/proc/<pid>/status` memory field (`VmRSS`, `VmHWM`, ...) in KiB; 0 if unknown.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.split(':').next() == Some(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far, in seconds; 0 if unknown.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Linux reports these in USER_HZ, which is 100 on every architecture edgecar targets.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The soft limit on open files of this process (children inherit it).
pub fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What a process's resident memory is made of, in KiB, from `/proc/<pid>/smaps`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Residency {
    /// All of it (the sum of the parts below).
    pub rss: u64,
    /// The executable's own code and read-only data, as the file holds them (clean pages).
    pub exe_file: u64,
    /// The executable's pages written since it was mapped: relocated data (RELRO), `.data`.
    pub exe_anon: u64,
    /// Shared libraries (libc, libm, libgcc_s, the loader) and the vDSO.
    pub libs: u64,
    /// Thread stacks: the main one and every 2 MiB thread stack mapping.
    pub stacks: u64,
    /// Every other anonymous page: the malloc heap and arenas, `.bss`, buffers.
    pub heap: u64,
    /// Threads.
    pub threads: u64,
}

/// Reads [`Residency`] of `pid` (all zero if it is gone).
pub fn residency(pid: u32) -> Residency {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut r = Residency {
        threads: proc_kib(pid, "Threads"),
        ..Residency::default()
    };
    // (path, size, rss, anonymous) of the mapping being read.
    let mut cur: Option<(String, u64, u64, u64)> = None;
    let add = |m: &(String, u64, u64, u64), r: &mut Residency| {
        let (path, size, rss, anon) = m;
        r.rss += rss;
        if *path == exe {
            r.exe_file += rss - anon;
            r.exe_anon += anon;
        } else if path.starts_with('/') || path == "[vdso]" || path == "[vvar]" {
            r.libs += rss;
        } else if path == "[stack]" || *size == 2048 {
            r.stacks += rss;
        } else {
            r.heap += rss;
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            if let Some(m) = cur.take() {
                add(&m, &mut r);
            }
            let path = f.skip(4).collect::<Vec<_>>().join(" ");
            cur = Some((path, 0, 0, 0));
            continue;
        }
        let kb = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if let Some(m) = cur.as_mut() {
            match first {
                "Size:" => m.1 = kb,
                "Rss:" => m.2 = kb,
                "Anonymous:" => m.3 = kb,
                _ => {}
            }
        }
    }
    if let Some(m) = cur.take() {
        add(&m, &mut r);
    }
    r
}
