//! The standard `process_*` metrics, read from `/proc` at each scrape (Linux only; elsewhere
//! none are written). They are rendered as text beside the exporter's output rather than
//! recorded through `metrics`: a `metrics` counter holds whole numbers, and CPU seconds are
//! fractional. About fifty lines of `/proc` parsing cost less than a dependency that would do
//! the same for every platform this service does not run on.

use std::fmt::Write;

/// The process metrics in Prometheus text format, or nothing where `/proc` cannot be read.
pub fn render() -> String {
    let Some(sample) = Sample::read() else {
        return String::new();
    };
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        sample.cpu_seconds,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        sample.resident_bytes,
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        sample.virtual_bytes,
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        sample.open_fds,
    );
    if let Some(max) = sample.max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        sample.start_time_seconds,
    );
    out
}

struct Sample {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: Option<f64>,
    start_time_seconds: f64,
}

impl Sample {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces: the
        // first of these is field 3 (state) in proc(5)'s numbering.
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // SAFETY: as above.
        let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        if ticks <= 0.0 || page_bytes <= 0.0 {
            return None;
        }
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        Some(Sample {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page_bytes,
            start_time_seconds: boot_time + field(22)? / ticks,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as f64,
            max_fds: max_fds(),
        })
    }
}

/// The soft limit on open files, which is the one `open` fails at.
fn max_fds() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as f64)
}
