//! A small flag parser for the bench's subcommands. Each mode declares a table of flags;
//! the table is the single source for parsing, for defaults and for `--help`, so the help
//! text cannot drift from what the code does.

use std::fmt::Write as _;
use std::time::Duration;

/// One flag of a mode. `arg` is the placeholder shown in help; an empty `arg` makes the
/// flag a switch (present or absent, no value).
pub struct Flag {
    pub name: &'static str,
    pub arg: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// The flags given on the command line, checked against a table.
pub struct Values {
    table: &'static [Flag],
    given: Vec<(&'static str, String)>,
}

pub enum Parsed {
    Run(Values),
    Help,
}

/// Accepts `--name value`, `--name=value` and, for switches, `--name`.
pub fn parse(args: &[String], table: &'static [Flag]) -> Result<Parsed, String> {
    let mut given: Vec<(&'static str, String)> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Parsed::Help);
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let Some(flag) = table.iter().find(|f| f.name == name) else {
            return Err(format!("unknown flag --{name}"));
        };
        let value = if flag.arg.is_empty() {
            match inline.as_deref() {
                None | Some("true") => "true".to_owned(),
                Some("false") => "false".to_owned(),
                Some(v) => {
                    return Err(format!(
                        "--{name} is a switch and takes no value (got {v:?})"
                    ))
                }
            }
        } else {
            match inline {
                Some(v) => v,
                None => match it.next() {
                    Some(v) => v.clone(),
                    None => return Err(format!("--{name} needs a value ({})", flag.arg)),
                },
            }
        };
        given.retain(|(n, _)| *n != flag.name);
        given.push((flag.name, value));
    }
    Ok(Parsed::Run(Values { table, given }))
}

impl Values {
    /// The given value, or the table's default.
    pub fn get(&self, name: &str) -> &str {
        if let Some((_, v)) = self.given.iter().find(|(n, _)| *n == name) {
            return v;
        }
        match self.table.iter().find(|f| f.name == name) {
            Some(flag) => flag.default,
            None => panic!("flag --{name} is not in its table"),
        }
    }

    pub fn switch(&self, name: &str) -> bool {
        self.get(name) == "true"
    }

    /// A count: a plain integer, optionally with a `k` (×1000) suffix, at least `min`.
    pub fn count(&self, name: &str, min: usize) -> Result<usize, String> {
        let s = self.get(name);
        let (digits, mult) = match s.strip_suffix(['k', 'K']) {
            Some(d) => (d, 1000),
            None => (s, 1),
        };
        let n = digits
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .ok_or_else(|| format!("--{name}: {s:?} is not a whole number"))?;
        if n < min {
            return Err(format!("--{name} must be at least {min}"));
        }
        Ok(n)
    }

    /// A byte size: an integer with an optional `B`, `KiB`/`K`/`k`, `MiB`/`M` suffix
    /// (binary multiples).
    pub fn size(&self, name: &str) -> Result<usize, String> {
        let s = self.get(name);
        let lower = s.to_ascii_lowercase();
        let (digits, mult) = [
            ("kib", 1 << 10),
            ("mib", 1 << 20),
            ("k", 1 << 10),
            ("m", 1 << 20),
            ("b", 1),
        ]
        .iter()
        .find_map(|(suffix, mult)| lower.strip_suffix(suffix).map(|d| (d.to_owned(), *mult)))
        .unwrap_or((lower.clone(), 1));
        digits
            .trim()
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .ok_or_else(|| format!("--{name}: {s:?} is not a size (e.g. 20, 1KiB, 16KiB)"))
    }

    /// A duration: seconds as a decimal number, optionally with an `s` or `ms` suffix.
    pub fn duration(&self, name: &str) -> Result<Duration, String> {
        let s = self.get(name);
        let (digits, scale) = if let Some(d) = s.strip_suffix("ms") {
            (d, 1e-3)
        } else if let Some(d) = s.strip_suffix('s') {
            (d, 1.0)
        } else {
            (s, 1.0)
        };
        match digits.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 && v * scale < 1e9 => {
                Ok(Duration::from_secs_f64(v * scale))
            }
            _ => Err(format!(
                "--{name}: {s:?} is not a duration in seconds (e.g. 5, 0.5, 500ms)"
            )),
        }
    }
}

/// The help text of one mode: the usage line, a description, then every flag with its
/// default.
pub fn help(mode: &str, about: &str, table: &[Flag]) -> String {
    let mut s = format!("usage: courier-bench {mode} [FLAGS]\n\n{about}\n\nflags:\n");
    let width = table
        .iter()
        .map(|f| f.name.len() + if f.arg.is_empty() { 0 } else { f.arg.len() + 1 })
        .max()
        .unwrap_or(0);
    for f in table {
        let left = if f.arg.is_empty() {
            f.name.to_owned()
        } else {
            format!("{} {}", f.name, f.arg)
        };
        let _ = write!(s, "  --{left:<width$}  {}", f.help);
        if f.arg.is_empty() {
            s.push('\n');
        } else {
            let _ = writeln!(s, " [default: {}]", f.default);
        }
    }
    s.push_str("  -h, --help");
    s.push('\n');
    s
}

/// A mode's command line turned into its options: `--help` printed, or a usage error
/// reported. `Err` carries the exit code to return (0 after help, 2 on bad input).
pub fn options<O>(
    mode: &str,
    about: &str,
    table: &'static [Flag],
    argv: &[String],
    opts: impl FnOnce(&Values) -> Result<O, String>,
) -> Result<O, i32> {
    let values = match parse(argv, table) {
        Ok(Parsed::Run(values)) => values,
        Ok(Parsed::Help) => {
            print!("{}", help(mode, about, table));
            return Err(0);
        }
        Err(e) => {
            eprintln!("courier-bench {mode}: {e}\n(try courier-bench {mode} --help)");
            return Err(2);
        }
    };
    opts(&values).map_err(|e| {
        eprintln!("courier-bench {mode}: {e}");
        2
    })
}
