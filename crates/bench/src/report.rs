//! Latency histograms and the two output forms: one JSON object, or aligned `name  value`
//! lines for people.

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::proc::round3;

/// A latency histogram in microseconds, 1 µs to 10 min at 3 significant digits.
pub(crate) fn latency_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a latency histogram")
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// 99.9th percentile.
    pub(crate) p999_ms: f64,
    /// Largest.
    pub(crate) max_ms: f64,
    /// Mean.
    pub(crate) mean_ms: f64,
    /// Samples.
    pub(crate) samples: u64,
}

impl Latency {
    /// Percentiles of a microsecond histogram.
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| round3(us as f64 / 1000.0);
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            mean_ms: round3(histogram.mean() / 1000.0),
            samples: histogram.len(),
        }
    }
}

/// Prints `report` as one JSON object, or as indented `key  value` lines under `title` (in
/// the report's field order, nested objects as `outer.inner`).
pub(crate) fn print(json: bool, title: &str, report: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(report).context("serializing the report")?;
    if json {
        println!("{text}");
        return Ok(());
    }
    let tree: Node = serde_json::from_str(&text).context("re-reading the report")?;
    println!("{title}");
    let mut lines = Vec::new();
    flatten("", &tree, &mut lines);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in lines {
        println!("  {key:<width$}  {value}");
    }
    Ok(())
}

/// A JSON value whose objects keep their order (serde_json's own map sorts keys).
enum Node {
    Leaf(Value),
    Map(Vec<(String, Node)>),
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> serde::de::Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Leaf(Value::Bool(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Leaf(Value::from(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Leaf(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Leaf(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Leaf(Value::from(v)))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Leaf(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Node, A::Error> {
        use serde::Deserialize as _;
        Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(Node::Leaf)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Node>()? {
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

fn flatten(prefix: &str, node: &Node, out: &mut Vec<(String, String)>) {
    match node {
        Node::Map(entries) => {
            if entries.is_empty() && !prefix.is_empty() {
                out.push((prefix.to_owned(), "-".to_owned()));
            }
            for (key, inner) in entries {
                let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&name, inner, out);
            }
        }
        Node::Leaf(Value::Null) => {}
        Node::Leaf(Value::Number(n)) => out.push((prefix.to_owned(), human_number(n))),
        Node::Leaf(Value::String(s)) => out.push((prefix.to_owned(), s.clone())),
        Node::Leaf(other) => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// Thousands separators for large integers; floats as they are.
fn human_number(n: &serde_json::Number) -> String {
    let whole = n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64));
    match whole {
        Some(v) if v >= 10_000 => {
            let digits = v.to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push('_');
                }
                out.push(c);
            }
            out
        }
        _ => n.to_string(),
    }
}

/// `a / b` rounded to 4 decimals, or `None` when `b` is zero.
pub(crate) fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| (a / b * 10_000.0).round() / 10_000.0)
}

/// `(after - before) / count`, rounded to a whole number, when both samples exist.
pub(crate) fn growth_per(before: Option<u64>, after: Option<u64>, count: u64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if count > 0 => Some(((a as f64 - b as f64) / count as f64).round()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_ms() {
        let mut h = latency_histogram().expect("histogram");
        for us in 1..=1000u64 {
            h.saturating_record(us * 10);
        }
        let l = Latency::of(&h);
        assert!((l.p50_ms - 5.0).abs() < 0.05, "{l:?}");
        assert!((l.p99_ms - 9.9).abs() < 0.05, "{l:?}");
        assert_eq!(l.samples, 1000);
    }

    #[test]
    fn human_lines_flatten_nested_objects() {
        let mut out = Vec::new();
        let tree: Node =
            serde_json::from_str(r#"{"z": 1, "a": {"b": 12345, "c": null}, "d": "x"}"#).expect("JSON");
        flatten("", &tree, &mut out);
        let expected = [("z", "1"), ("a.b", "12_345"), ("d", "x")];
        assert_eq!(out, expected.map(|(k, v)| (k.to_owned(), v.to_owned())), "in the report's order");
    }
}
