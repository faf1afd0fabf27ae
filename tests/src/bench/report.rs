//! The bench's results: rows of samples, each optionally compared with a
//! baseline row measured in the same run, printed as a Markdown table, and
//! the description of the machine they were measured on.

use std::fmt::Write as _;

use crate::bench::stats::Samples;

/// What a row's samples measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Seconds (printed as µs, ms or s).
    Seconds,
    /// Bytes per second (printed as MiB/s).
    BytesPerSec,
    /// Jobs per second.
    JobsPerSec,
    /// Bytes (printed as KiB or MiB).
    Bytes,
    /// A share of one CPU core, in percent.
    Percent,
    /// A number of things.
    Count,
}

impl Unit {
    /// `value` in this unit, for people.
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Seconds if value < 1e-3 => format!("{:.1} µs", value * 1e6),
            Unit::Seconds if value < 1.0 => format!("{:.2} ms", value * 1e3),
            Unit::Seconds => format!("{value:.2} s"),
            Unit::BytesPerSec => format!("{:.0} MiB/s", value / f64::from(1 << 20)),
            Unit::JobsPerSec => format!("{value:.1} jobs/s"),
            Unit::Bytes if value < f64::from(1 << 20) => {
                format!("{:.1} KiB", value / 1024.0)
            }
            Unit::Bytes => format!("{:.1} MiB", value / f64::from(1 << 20)),
            Unit::Percent => format!("{value:.1} %"),
            Unit::Count => format!("{value:.0}"),
        }
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Row {
    /// The figure it belongs to (1-6 of BENCHMARKS.md).
    pub figure: &'static str,
    /// A unique key, which other rows name as their baseline.
    pub key: String,
    /// What was measured, for people.
    pub what: String,
    /// The unit of the samples.
    pub unit: Unit,
    /// The samples.
    pub samples: Samples,
    /// The key of the row this one is compared with.
    pub baseline: Option<String>,
}

/// Every row and note of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The rows, in the order measured.
    pub rows: Vec<Row>,
    /// Notes printed under the table (scaling, choices, skipped peers).
    pub notes: Vec<String>,
}

impl Report {
    /// Adds a row.
    pub fn add(
        &mut self,
        figure: &'static str,
        key: &str,
        what: impl Into<String>,
        unit: Unit,
        samples: Samples,
        baseline: Option<&str>,
    ) {
        self.rows.push(Row {
            figure,
            key: key.to_owned(),
            what: what.into(),
            unit,
            samples,
            baseline: baseline.map(str::to_owned),
        });
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("bench: note: {note}");
        self.notes.push(note);
    }

    fn median_of(&self, key: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.key == key)
            .and_then(|r| r.samples.median())
    }

    /// The table in Markdown, then the notes.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| fig | measurement | n | median | p99 | baseline (same run) | ratio |\n\
             |---|---|---:|---:|---:|---|---:|\n",
        );
        for row in &self.rows {
            let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| row.unit.format(v));
            let (baseline, ratio) = match &row.baseline {
                Some(key) => {
                    let ratio = match (row.samples.median(), self.median_of(key)) {
                        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
                        _ => "-".to_owned(),
                    };
                    (key.clone(), ratio)
                }
                None => ("-".to_owned(), "-".to_owned()),
            };
            let _ = writeln!(
                out,
                "| {} | {} (`{}`) | {} | {} | {} | {} | {} |",
                row.figure,
                row.what,
                row.key,
                row.samples.len(),
                cell(row.samples.median()),
                cell(row.samples.p99()),
                baseline,
                ratio,
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}

/// The machine: nproc, memory, kernel, CPU model, cgroup layout.
pub fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    // The v1 hierarchies (a hybrid host's), then the cgroup2 mount the
    // supervisor uses.
    let mut cgroup: Vec<String> = read("/proc/self/mountinfo")
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let point = mount.split(' ').nth(4)?;
            fs.starts_with("cgroup ").then(|| format!("v1 {point}"))
        })
        .collect();
    if let Ok(mount) = jobworker_supervisor::cgroup::cgroup2_mount() {
        let controllers = read(&format!("{}/cgroup.controllers", mount.display()));
        cgroup.push(format!(
            "cgroup2 at {} (controllers: {})",
            mount.display(),
            if controllers.trim().is_empty() {
                "none"
            } else {
                controllers.trim()
            }
        ));
    }
    let layout = if cgroup.iter().any(|c| c.starts_with("v1")) {
        "hybrid"
    } else {
        "unified"
    };
    format!(
        "- CPU: {model}, nproc {nproc}\n- memory: {mem}\n- kernel: {kernel}\n\
         - cgroups ({layout}): {}\n",
        cgroup.join("; ")
    )
}

/// The first three fields of /proc/loadavg: other work on the machine shows
/// here and weighs on every figure.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
