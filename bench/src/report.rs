//! The figures: the JSON written by `--json`, DESIGN's targets, and the table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything one run measured. Headline figures use the JSON keys issue 7
/// names; a figure not measured (`--only`) is left out.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// Slash command sent → task frame at the agent, p50, at 200 commands/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch_p50_ms: Option<f64>,
    /// The same, p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch_p99_ms: Option<f64>,
    /// Highest offered command rate met with stable latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_dispatch_per_s: Option<f64>,
    /// Complete lifecycles per second (10 progress events each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycles_per_s: Option<f64>,
    /// Bot resident memory per idle agent connection, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_conn_kib: Option<f64>,
    /// Highest rate of writes any one task message got, per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edits_per_task_message_per_s: Option<f64>,
    /// Task end → its final Slack edit, p99, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_edit_lag_ms: Option<f64>,
    /// Frozen agent → marked disconnected, s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_agent_detect_s: Option<f64>,
    /// Queued tasks → all handed out after an agent connects, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_drain_ms: Option<f64>,
    /// Bot resident memory when idle, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bot_idle_rss_mib: Option<f64>,
    /// Bot CPU time per complete lifecycle (10 progress events), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms_per_lifecycle: Option<f64>,
    /// Signed slash command sent → the task's message posted to the fake Slack, p50, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slash_to_message_p50_ms: Option<f64>,
    /// Two processes on PostgreSQL: task created on one → its frame at an
    /// agent of the other, p50, ms. Always written: null without `--postgres URL`.
    pub pg_cross_dispatch_p50_ms: Option<f64>,
    /// The same, p99. Null without `--postgres URL`.
    pub pg_cross_dispatch_p99_ms: Option<f64>,
    /// Two processes on PostgreSQL: complete lifecycles per second. Null
    /// without `--postgres URL`.
    pub pg_lifecycles_per_s: Option<f64>,
    /// PostgreSQL: complete lifecycles per second with 1, 2 and 3 processes
    /// (commands and agents spread over them), by the number of processes.
    /// Null without `--postgres URL`.
    pub pg_lifecycles_per_s_by_processes: Option<BTreeMap<String, f64>>,

    /// Further figures (named in `workloads` too).
    pub extra: BTreeMap<String, f64>,
    /// The steps of the highest-rate search.
    pub dispatch_steps: Vec<RateStep>,
    /// The growth curves.
    pub curves: Curves,
    /// What each figure measured: the workload behind the number.
    pub workloads: BTreeMap<String, String>,
    /// Where and how it ran.
    pub environment: Environment,
}

/// One offered rate of the highest-rate search.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateStep {
    /// Commands per second offered.
    pub offered_per_s: f64,
    /// Task frames per second delivered to agents.
    pub delivered_per_s: f64,
    /// Dispatch latency p50, ms.
    pub p50_ms: f64,
    /// Dispatch latency p99, ms.
    pub p99_ms: f64,
    /// Commands refused or failed.
    pub failed: u64,
    /// Bot CPU time per task in this step, ms.
    pub bot_cpu_ms_per_task: f64,
    /// Whether the step met its load with stable latency.
    pub sustained: bool,
}

/// The growth curves.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Curves {
    /// Dispatch latency and memory as connected agents grow.
    pub agents: Vec<AgentsPoint>,
    /// Dispatch latency as the task table grows.
    pub task_rows: Vec<RowsPoint>,
    /// Lifecycles per second as progress events per task grow.
    pub events_per_task: Vec<EventsPoint>,
    /// PostgreSQL: lifecycles per second as bot processes are added.
    pub pg_processes: Vec<ProcessesPoint>,
}

/// One point of the PostgreSQL processes curve.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessesPoint {
    /// Bot processes on the one database.
    pub processes: u64,
    /// How commands and agents were placed (`spread`, or `cross`: every
    /// command to the first process, every agent on the second).
    pub placement: String,
    /// Complete lifecycles per second.
    pub lifecycles_per_s: f64,
    /// CPU time of all the bot processes per lifecycle, ms.
    pub bot_cpu_ms: f64,
    /// CPU time of the PostgreSQL server's processes per lifecycle, ms
    /// (0 when the server is not on this machine).
    pub pg_cpu_ms: f64,
    /// The benchmark's own CPU time per lifecycle, ms.
    pub bench_cpu_ms: f64,
}

/// One point of the connected-agents curve.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentsPoint {
    /// Connected agents.
    pub agents: u64,
    /// Bot resident memory with them connected and idle, MiB.
    pub rss_mib: f64,
    /// (RSS − RSS with none) / agents, KiB.
    pub per_conn_kib: f64,
    /// Dispatch latency p50 at 200 commands/s with them connected, ms.
    pub dispatch_p50_ms: f64,
    /// The same, p99.
    pub dispatch_p99_ms: f64,
}

/// One point of the task-table curve.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RowsPoint {
    /// Rows in the tasks table when the bot started.
    pub rows: u64,
    /// Dispatch latency p50 at 200 commands/s, ms.
    pub dispatch_p50_ms: f64,
    /// The same, p99.
    pub dispatch_p99_ms: f64,
    /// Bot start (migrations, recovery) → ready, ms.
    pub startup_ms: f64,
    /// `/baton status` (a person's recent tasks, read in SQL) answered, p50 ms.
    pub status_p50_ms: f64,
    /// `/baton-admin tasks completed` (newest tasks in one state) answered, p50 ms.
    pub admin_tasks_p50_ms: f64,
}

/// One point of the events-per-task curve.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EventsPoint {
    /// Progress events per task.
    pub events: u64,
    /// Complete lifecycles per second.
    pub lifecycles_per_s: f64,
    /// Bot CPU time per lifecycle, ms.
    pub bot_cpu_ms: f64,
    /// The benchmark's own CPU time per lifecycle (agents, Slack, commands), ms.
    pub bench_cpu_ms: f64,
}

/// Where the figures come from.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Environment {
    /// CPUs available.
    pub cores: usize,
    /// `--quick`: a smoke run, not figures.
    pub quick: bool,
    /// The bot binary measured.
    pub bot_bin: String,
    /// `RUST_LOG` of the bot.
    pub bot_log: String,
    /// 1-minute load average when the run started (other work on the machine).
    pub load_avg_start: f64,
    /// The same when it ended.
    pub load_avg_end: f64,
    /// Seconds the whole run took.
    pub run_secs: f64,
    /// The PostgreSQL server's `version()`, when `--postgres` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
}

/// A DESIGN target: how to print it and whether a value meets it.
#[derive(Debug)]
pub struct Target {
    /// The JSON key.
    pub key: &'static str,
    /// The unit printed after the value.
    pub unit: &'static str,
    /// The target as DESIGN states it.
    pub text: &'static str,
    /// Whether a value meets it.
    pub meets: fn(f64) -> bool,
}

/// DESIGN's performance table, in the order it lists the figures.
pub const TARGETS: &[Target] = &[
    Target {
        key: "dispatch_p50_ms",
        unit: "ms",
        text: "≤ 1 ms",
        meets: |v| v <= 1.0,
    },
    Target {
        key: "dispatch_p99_ms",
        unit: "ms",
        text: "≤ 5 ms",
        meets: |v| v <= 5.0,
    },
    Target {
        key: "max_dispatch_per_s",
        unit: "/s",
        text: "≥ 2,000/s",
        meets: |v| v >= 2000.0,
    },
    Target {
        key: "lifecycles_per_s",
        unit: "/s",
        text: "≥ 2,000/s",
        meets: |v| v >= 2000.0,
    },
    Target {
        key: "cpu_ms_per_lifecycle",
        unit: "ms",
        text: "≤ 0.7 ms",
        meets: |v| v <= 0.7,
    },
    Target {
        key: "idle_conn_kib",
        unit: "KiB",
        text: "≤ 8 KiB",
        meets: |v| v <= 8.0,
    },
    Target {
        key: "bot_idle_rss_mib",
        unit: "MiB",
        text: "≤ 20 MiB",
        meets: |v| v <= 20.0,
    },
    Target {
        key: "edits_per_task_message_per_s",
        unit: "/s",
        // Measured at the fake Slack: loopback jitter of a few ms either way.
        text: "≤ 1/s",
        meets: |v| v <= 1.005,
    },
    Target {
        key: "final_edit_lag_ms",
        unit: "ms",
        text: "≤ 1,500 ms",
        meets: |v| v <= 1500.0,
    },
    Target {
        key: "dead_agent_detect_s",
        unit: "s",
        text: "≤ 2 heartbeats",
        meets: |_| true, // judged against the heartbeat in use, below
    },
    Target {
        key: "queue_drain_ms",
        unit: "ms",
        text: "≤ 250 ms",
        meets: |v| v <= 250.0,
    },
    Target {
        key: "slash_to_message_p50_ms",
        unit: "ms",
        text: "≤ 50 ms",
        meets: |v| v <= 50.0,
    },
    Target {
        key: "pg_cross_dispatch_p50_ms",
        unit: "ms",
        text: "≤ 5 ms",
        meets: |v| v <= 5.0,
    },
    Target {
        key: "pg_cross_dispatch_p99_ms",
        unit: "ms",
        text: "≤ 20 ms",
        meets: |v| v <= 20.0,
    },
    Target {
        key: "pg_lifecycles_per_s",
        unit: "/s",
        text: "≥ 1,000/s",
        meets: |v| v >= 1000.0,
    },
];

/// The PostgreSQL figures, written as null (with this note in `workloads`)
/// when the run has no PostgreSQL to measure.
pub const PG_KEYS: [&str; 4] = [
    "pg_cross_dispatch_p50_ms",
    "pg_cross_dispatch_p99_ms",
    "pg_lifecycles_per_s",
    "pg_lifecycles_per_s_by_processes",
];

/// Why the PostgreSQL figures are null.
pub const PG_SKIPPED: &str =
    "needs --postgres URL: two bot processes on one PostgreSQL database (not measured in this run)";

impl Report {
    /// A headline figure by its JSON key.
    pub fn get(&self, key: &str) -> Option<f64> {
        match key {
            "dispatch_p50_ms" => self.dispatch_p50_ms,
            "dispatch_p99_ms" => self.dispatch_p99_ms,
            "max_dispatch_per_s" => self.max_dispatch_per_s,
            "lifecycles_per_s" => self.lifecycles_per_s,
            "idle_conn_kib" => self.idle_conn_kib,
            "edits_per_task_message_per_s" => self.edits_per_task_message_per_s,
            "final_edit_lag_ms" => self.final_edit_lag_ms,
            "dead_agent_detect_s" => self.dead_agent_detect_s,
            "queue_drain_ms" => self.queue_drain_ms,
            "bot_idle_rss_mib" => self.bot_idle_rss_mib,
            "cpu_ms_per_lifecycle" => self.cpu_ms_per_lifecycle,
            "slash_to_message_p50_ms" => self.slash_to_message_p50_ms,
            "pg_cross_dispatch_p50_ms" => self.pg_cross_dispatch_p50_ms,
            "pg_cross_dispatch_p99_ms" => self.pg_cross_dispatch_p99_ms,
            "pg_lifecycles_per_s" => self.pg_lifecycles_per_s,
            _ => None,
        }
    }

    /// Whether a headline figure meets its target (None when not measured).
    pub fn meets(&self, target: &Target) -> Option<bool> {
        let v = self.get(target.key)?;
        if target.key == "dead_agent_detect_s" {
            let hb = self.extra.get("heartbeat_secs").copied().unwrap_or(15.0);
            return Some(v <= 2.0 * hb);
        }
        Some((target.meets)(v))
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<30} {:>12}  {:<16} {:<5}\n",
            "figure", "measured", "target", "meets"
        ));
        for t in TARGETS {
            let (value, verdict) = match (self.get(t.key), self.meets(t)) {
                (Some(v), Some(ok)) => (
                    format!("{} {}", fmt_num(v), t.unit),
                    if ok { "yes" } else { "NO" },
                ),
                _ if PG_KEYS.contains(&t.key) => ("null".to_owned(), "needs --postgres URL"),
                _ => ("-".to_owned(), ""),
            };
            out.push_str(&format!(
                "{:<30} {:>12}  {:<16} {:<5}\n",
                t.key, value, t.text, verdict
            ));
        }
        if !self.curves.agents.is_empty() {
            out.push_str("\nconnected agents → bot RSS, per connection, dispatch p50/p99\n");
            for p in &self.curves.agents {
                out.push_str(&format!(
                    "  {:>6} agents  {:>8.1} MiB  {:>6.2} KiB/conn  {:>7.3} / {:>7.3} ms\n",
                    p.agents, p.rss_mib, p.per_conn_kib, p.dispatch_p50_ms, p.dispatch_p99_ms
                ));
            }
        }
        if !self.curves.task_rows.is_empty() {
            out.push_str("\ntask table rows → dispatch p50/p99, start-up\n");
            for p in &self.curves.task_rows {
                out.push_str(&format!(
                    "  {:>8} rows  {:>7.3} / {:>7.3} ms  start-up {:>7.0} ms  status {:>6.3} ms  admin tasks {:>6.3} ms\n",
                    p.rows,
                    p.dispatch_p50_ms,
                    p.dispatch_p99_ms,
                    p.startup_ms,
                    p.status_p50_ms,
                    p.admin_tasks_p50_ms
                ));
            }
        }
        if !self.curves.events_per_task.is_empty() {
            out.push_str(
                "\nprogress events per task → lifecycles/s, CPU ms per lifecycle: bot, benchmark\n",
            );
            for p in &self.curves.events_per_task {
                out.push_str(&format!(
                    "  {:>4} events  {:>8.0} /s  {:>6.3} ms  {:>6.3} ms\n",
                    p.events, p.lifecycles_per_s, p.bot_cpu_ms, p.bench_cpu_ms
                ));
            }
        }
        if !self.curves.pg_processes.is_empty() {
            out.push_str(
                "\nPostgreSQL: bot processes → lifecycles/s, CPU ms per lifecycle: bots, PostgreSQL, benchmark\n",
            );
            for p in &self.curves.pg_processes {
                out.push_str(&format!(
                    "  {:>2} processes ({:<6})  {:>8.0} /s  {:>6.3} ms  {:>6.3} ms  {:>6.3} ms\n",
                    p.processes,
                    p.placement,
                    p.lifecycles_per_s,
                    p.bot_cpu_ms,
                    p.pg_cpu_ms,
                    p.bench_cpu_ms
                ));
            }
        }
        if !self.dispatch_steps.is_empty() {
            out.push_str(
                "\noffered commands/s → delivered/s, p50/p99, bot CPU per task, sustained\n",
            );
            for s in &self.dispatch_steps {
                out.push_str(&format!(
                    "  {:>6.0} → {:>7.0}  {:>7.3} / {:>8.3} ms  {:>6.3} ms  failed {:>3}  {}\n",
                    s.offered_per_s,
                    s.delivered_per_s,
                    s.p50_ms,
                    s.p99_ms,
                    s.bot_cpu_ms_per_task,
                    s.failed,
                    if s.sustained { "yes" } else { "no" }
                ));
            }
        }
        if !self.extra.is_empty() {
            out.push_str("\nother figures\n");
            for (k, v) in &self.extra {
                out.push_str(&format!("  {k:<40} {}\n", fmt_num(*v)));
            }
        }
        out
    }
}

/// A number with as many decimals as it deserves.
pub fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_keys_are_written_as_null_when_not_measured() {
        let json = serde_json::to_value(Report::default()).unwrap_or_default();
        for key in PG_KEYS {
            assert!(json[key].is_null(), "{key} in {json}");
            assert!(
                json.as_object().is_some_and(|o| o.contains_key(key)),
                "{key}"
            );
        }
        let table = Report::default().table();
        assert!(
            table.contains("pg_lifecycles_per_s                    null"),
            "{table}"
        );
    }

    #[test]
    fn the_processes_curve_is_in_the_table() {
        let mut report = Report {
            pg_lifecycles_per_s_by_processes: Some(BTreeMap::from([("1".into(), 900.0)])),
            ..Report::default()
        };
        report.curves.pg_processes.push(ProcessesPoint {
            processes: 1,
            placement: "spread".into(),
            lifecycles_per_s: 900.0,
            bot_cpu_ms: 1.5,
            pg_cpu_ms: 0.8,
            bench_cpu_ms: 0.3,
        });
        let json = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(json["pg_lifecycles_per_s_by_processes"]["1"], 900.0);
        assert!(
            report
                .table()
                .contains(" 1 processes (spread)       900 /s   1.500 ms   0.800 ms   0.300 ms"),
            "{}",
            report.table()
        );
    }
}
