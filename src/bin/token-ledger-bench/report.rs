//! One run's figures, printed as text and JSON, and the per-caller statistics they sum.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// One run's figures.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub label: String,
    /// What one operation is (`events`, or `pairs` for Reserve + CommitHold): `events` and
    /// `events_per_sec` count these.
    pub unit: &'static str,
    pub calls: u64,
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub calls_per_sec: f64,
    pub latency_us: [u64; 5],
    pub errors: BTreeMap<String, u64>,
    pub missed_sends: u64,
    pub server_peak_rss_kib: Option<u64>,
    pub storage_bytes_per_usage_row: Option<f64>,
    /// The machine's CPU over the measured window (`/proc/stat`).
    pub machine_cpu: Option<MachineCpu>,
    pub verified: String,
}

/// The whole machine's CPU over a run's measured window.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    /// Busy share of all cores.
    pub busy_percent: f64,
    /// Busy CPU time per event, every process counted.
    pub us_per_event: f64,
}

impl RunReport {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "label": self.label, "unit": self.unit, "calls": self.calls, "events": self.events, "seconds": self.seconds,
            "events_per_sec": self.events_per_sec, "calls_per_sec": self.calls_per_sec,
            "latency_us": {"p50": self.latency_us[0], "p90": self.latency_us[1], "p99": self.latency_us[2],
                           "p99_9": self.latency_us[3], "max": self.latency_us[4]},
            "errors": self.errors, "missed_sends": self.missed_sends,
            "server_peak_rss_kib": self.server_peak_rss_kib,
            "storage_bytes_per_usage_row": self.storage_bytes_per_usage_row,
            "machine_cpu_busy_percent": self.machine_cpu.map(|c| c.busy_percent),
            "machine_cpu_us_per_event": self.machine_cpu.map(|c| c.us_per_event),
            "verified": self.verified,
        })
    }

    pub fn print(&self) {
        println!(
            "{:<28} {:>10.0} {}/s {:>9.0} calls/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>8.2} ms",
            self.label,
            self.events_per_sec,
            self.unit,
            self.calls_per_sec,
            self.latency_us[0] as f64 / 1000.0,
            self.latency_us[1] as f64 / 1000.0,
            self.latency_us[2] as f64 / 1000.0,
            self.latency_us[3] as f64 / 1000.0,
            self.latency_us[4] as f64 / 1000.0,
        );
        println!(
            "{:<28} {} calls, {} {} in {:.1} s; errors {:?}; missed sends {}; server peak RSS {}; storage {}; machine CPU {}; {}",
            "",
            self.calls,
            self.events,
            self.unit,
            self.seconds,
            self.errors,
            self.missed_sends,
            self.server_peak_rss_kib
                .map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            self.storage_bytes_per_usage_row
                .map_or("-".into(), |b| format!("{b:.0} B/usage row")),
            self.machine_cpu.map_or("-".into(), |c| format!(
                "{:.0}% busy, {:.1} µs/{}",
                c.busy_percent,
                c.us_per_event,
                self.unit.trim_end_matches('s')
            )),
            self.verified
        );
    }
}

/// What one caller saw: calls, events and errors by code (latencies go to its histogram).
#[derive(Default)]
pub struct Stats {
    pub calls: u64,
    pub events: u64,
    pub errors: BTreeMap<String, u64>,
}
impl Stats {
    pub fn record(
        &mut self,
        hist: &mut Histogram<u64>,
        latency: Duration,
        events: u64,
        err: Option<tonic::Code>,
    ) {
        self.calls += 1;
        self.events += events;
        let _ = hist.record((latency.as_micros() as u64).max(1));
        if let Some(code) = err {
            *self.errors.entry(format!("{code:?}")).or_default() += 1;
        }
    }

    pub fn merge(&mut self, other: Stats) {
        self.calls += other.calls;
        self.events += other.events;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}
