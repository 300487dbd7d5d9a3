//! Configuration: `neo.conf` in NEO's INI format and the node programs' command lines.
//!
//! As in NEO, each program reads one section (`-s`, default: its node type) of the file given
//! with `-f`, with `[DEFAULT]` supplying common values, and its command-line options override
//! the file. Option names are the long option names with `-` turned into `_`. An option no
//! node type knows, an option of another node type in the program's own section, and a bad
//! value are errors that name the option and where it came from.
//!
//! The INI reader is written here rather than taken from a crate because the behaviour we
//! need is Python ConfigParser's (`:` or `=`, indented continuation lines for lists,
//! `[DEFAULT]` inheritance, duplicates refused) with file:line in every error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::actors::master::MasterConfig;
use crate::proto::{Address, Nid, NodeType};

/// A configuration problem, worded for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// One parsed INI file.
#[derive(Debug, Clone)]
pub struct Ini {
    path: PathBuf,
    /// Section name -> option -> (value, line).
    sections: BTreeMap<String, BTreeMap<String, (String, usize)>>,
}

const DEFAULT: &str = "DEFAULT";

impl Ini {
    pub fn read(path: &Path) -> Result<Ini, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read configuration file {}: {e}",
                path.display()
            ))
        })?;
        Ini::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Ini, ConfigError> {
        let at = |line: usize| format!("{}:{line}", path.display());
        let mut sections: BTreeMap<String, BTreeMap<String, (String, usize)>> = BTreeMap::new();
        let mut current: Option<String> = None;
        let mut last_key: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                last_key = None;
                continue;
            }
            if trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if raw.starts_with([' ', '\t']) {
                // A continuation line adds to the previous value (a list, one item a line).
                let (Some(sec), Some(key)) = (&current, &last_key) else {
                    return err(format!(
                        "{}: indented line continues no option: {trimmed:?}",
                        at(line)
                    ));
                };
                let entry = sections
                    .get_mut(sec)
                    .and_then(|s| s.get_mut(key))
                    .expect("last option");
                if !entry.0.is_empty() {
                    entry.0.push('\n');
                }
                entry.0.push_str(trimmed);
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('[') {
                let Some(name) = rest.strip_suffix(']') else {
                    return err(format!(
                        "{}: malformed section header {trimmed:?}",
                        at(line)
                    ));
                };
                let name = name.trim().to_string();
                if sections.contains_key(&name) {
                    return err(format!("{}: section [{name}] appears twice", at(line)));
                }
                sections.insert(name.clone(), BTreeMap::new());
                current = Some(name);
                last_key = None;
                continue;
            }
            let Some(sep) = trimmed.find([':', '=']) else {
                return err(format!(
                    "{}: expected 'option: value' or a [section], got {trimmed:?}",
                    at(line)
                ));
            };
            let key = trimmed[..sep].trim().to_lowercase().replace('-', "_");
            let value = trimmed[sep + 1..].trim().to_string();
            if key.is_empty() {
                return err(format!("{}: an option without a name", at(line)));
            }
            let Some(sec) = &current else {
                return err(format!("{}: option {key:?} before any [section]", at(line)));
            };
            let options = sections.get_mut(sec).expect("current section");
            if options.contains_key(&key) {
                return err(format!(
                    "{}: option {key:?} appears twice in [{sec}]",
                    at(line)
                ));
            }
            options.insert(key.clone(), (value, line));
            last_key = Some(key);
        }
        Ok(Ini {
            path: path.to_path_buf(),
            sections,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.sections.contains_key(name)
    }
}

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    CommandLine,
    File {
        path: PathBuf,
        section: String,
        line: usize,
    },
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::CommandLine => write!(f, "on the command line"),
            Source::File {
                path,
                section,
                line,
            } => write!(f, "in {}:{line} [{section}]", path.display()),
            Source::Default => write!(f, "(default)"),
        }
    }
}

/// Options each node type reads, and options of NEO this implementation does not offer yet
/// (accepted in no section, so that setting one is an error rather than silently ignored).
fn known_options(ty: NodeType) -> &'static [&'static str] {
    const SERVER: [&str; 4] = ["cluster", "masters", "bind", "logfile"];
    match ty {
        NodeType::Master => &[
            "cluster",
            "masters",
            "bind",
            "logfile",
            "autostart",
            "replicas",
            "partitions",
            "nid",
        ],
        NodeType::Storage => &[
            "cluster",
            "masters",
            "bind",
            "logfile",
            "adapter",
            "database",
            "wait",
            "nid",
            "engine",
            "dedup",
            "disable_pack",
            "disable_drop_partitions",
        ],
        NodeType::Admin => &SERVER,
        NodeType::Client => &[],
    }
}

const NOT_YET: &[&str] = &[
    "ca",
    "cert",
    "key",
    "dynamic_master_list",
    "upstream_cluster",
    "upstream_masters",
    "backup",
    "new_nid",
    "engine",
    "dedup",
    "disable_pack",
    "disable_drop_partitions",
    "monitor_maxlag",
    "monitor_email",
    "monitor_backup",
    "smtp",
    "smtp_tls",
    "smtp_auth",
];

/// The merged settings of one node: command line over file section over `[DEFAULT]`.
#[derive(Debug, Clone)]
pub struct Settings {
    node_type: NodeType,
    values: BTreeMap<String, (String, Source)>,
}

impl Settings {
    /// Merge `file` (section `section`, or the node type's name) with command-line
    /// `overrides` (option name, value).
    pub fn load(
        node_type: NodeType,
        file: Option<&Ini>,
        section: Option<&str>,
        overrides: &[(&'static str, Option<String>)],
    ) -> Result<Settings, ConfigError> {
        let mut values = BTreeMap::new();
        if let Some(ini) = file {
            let default_section = node_type.name().to_lowercase();
            let section = section.unwrap_or(&default_section);
            if !ini.has_section(section) {
                return err(format!("{}: no section [{section}]", ini.path.display()));
            }
            let own = known_options(node_type);
            for sec in [DEFAULT, section] {
                let Some(options) = ini.sections.get(sec) else {
                    continue;
                };
                for (key, (value, line)) in options {
                    let src = Source::File {
                        path: ini.path.clone(),
                        section: sec.to_string(),
                        line: *line,
                    };
                    if NOT_YET.contains(&key.as_str()) {
                        return err(format!(
                            "option {key:?} {src} is not supported by this version of NEO"
                        ));
                    }
                    if !own.contains(&key.as_str()) {
                        let anyone = NodeType::ALL
                            .iter()
                            .any(|t| known_options(*t).contains(&key.as_str()));
                        if !anyone {
                            return err(format!("unknown option {key:?} {src}"));
                        }
                        if sec != DEFAULT {
                            return err(format!(
                                "option {key:?} {src} is not a {} option",
                                node_type.name().to_lowercase()
                            ));
                        }
                        // [DEFAULT] serves every node type: another type's option is fine.
                        continue;
                    }
                    values.insert(key.clone(), (value.clone(), src));
                }
            }
        } else if let Some(s) = section {
            return err(format!("--section {s} needs a configuration file (-f)"));
        }
        for (key, value) in overrides {
            if let Some(v) = value {
                values.insert(key.to_string(), (v.clone(), Source::CommandLine));
            }
        }
        Ok(Settings { node_type, values })
    }

    fn raw(&self, key: &str) -> Option<&(String, Source)> {
        self.values.get(key)
    }

    fn parse<T>(
        &self,
        key: &str,
        what: &str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some((v, src)) => f(v).map(Some).map_err(|e| {
                ConfigError(format!(
                    "invalid value {v:?} for option {key:?} {src}: expected {what}: {e}"
                ))
            }),
        }
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.raw(key).map(|(v, _)| v.clone())
    }

    pub fn required(&self, key: &str) -> Result<String, ConfigError> {
        match self.string(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => err(format!(
                "the {} needs option {key:?} (--{} or {key} in the configuration file)",
                self.node_type.name().to_lowercase(),
                key.replace('_', "-")
            )),
        }
    }

    pub fn address(
        &self,
        key: &str,
        default_port: Option<u16>,
    ) -> Result<Option<Address>, ConfigError> {
        self.parse(key, "an address host:port", |v| {
            Address::parse_with_default(v, default_port)
        })
    }

    /// A list of addresses separated by spaces, commas or lines.
    pub fn addresses(&self, key: &str) -> Result<Vec<Address>, ConfigError> {
        Ok(self
            .parse(key, "addresses host:port separated by spaces", |v| {
                v.split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<Address>())
                    .collect()
            })?
            .unwrap_or_default())
    }

    pub fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.parse(key, "a whole number", |v| {
            v.parse::<T>().map_err(|e| e.to_string())
        })
    }

    pub fn nid(&self, key: &str) -> Result<Option<Nid>, ConfigError> {
        let ty = self.node_type;
        self.parse(
            key,
            &format!(
                "a {} node id like {}1",
                ty.name().to_lowercase(),
                ty.letter()
            ),
            |v| {
                let nid: Nid = v.parse()?;
                if nid.node_type() != Some(ty) {
                    return Err(format!("{nid} is not a {} id", ty.name().to_lowercase()));
                }
                Ok(nid)
            },
        )
    }

    pub fn path(&self, key: &str) -> Option<PathBuf> {
        self.string(key).map(|v| expand_home(&v))
    }
}

/// `~/x` as the home directory's `x`, as NEO does for paths.
pub fn expand_home(v: &str) -> PathBuf {
    match (v.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(v),
    }
}

/// Options every server node program takes.
#[derive(Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// Configuration file (NEO's INI format).
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// Section of the configuration file to read (default: the node type).
    #[arg(short = 's', long)]
    pub section: Option<String>,
    /// Cluster name (must be the same on every node).
    #[arg(short = 'c', long)]
    pub cluster: Option<String>,
    /// Master addresses, space separated.
    #[arg(short = 'm', long)]
    pub masters: Option<String>,
    /// Address to listen on.
    #[arg(short = 'b', long)]
    pub bind: Option<String>,
    /// Write the log to this file instead of standard error.
    #[arg(short = 'l', long)]
    pub logfile: Option<String>,
}

impl ServerArgs {
    fn overrides(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("cluster", self.cluster.clone()),
            ("masters", self.masters.clone()),
            ("bind", self.bind.clone()),
            ("logfile", self.logfile.clone()),
        ]
    }

    fn load(
        &self,
        ty: NodeType,
        more: Vec<(&'static str, Option<String>)>,
    ) -> Result<Settings, ConfigError> {
        let ini = self.file.as_deref().map(Ini::read).transpose()?;
        let mut overrides = self.overrides();
        overrides.extend(more);
        Settings::load(ty, ini.as_ref(), self.section.as_deref(), &overrides)
    }
}

/// `neomaster`'s own options.
#[derive(Args, Debug, Clone, Default)]
pub struct MasterArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Start a new cluster automatically once this many storage nodes are pending.
    #[arg(short = 'A', long)]
    pub autostart: Option<String>,
    /// Replicas of a new database.
    #[arg(short = 'r', long)]
    pub replicas: Option<String>,
    /// Partitions of a new database.
    #[arg(short = 'p', long)]
    pub partitions: Option<String>,
    /// Node id to use (testing).
    #[arg(short = 'i', long)]
    pub nid: Option<String>,
}

/// What every node program needs besides its role's configuration.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub logfile: Option<PathBuf>,
}

pub const MASTER_PORT: u16 = 10000;
pub const ADMIN_PORT: u16 = 9999;

/// The masters a node connects to: `--masters`, default 127.0.0.1:10000 (as NEO's).
fn masters_or_default(s: &Settings) -> Result<Vec<Address>, ConfigError> {
    let m = s.addresses("masters")?;
    Ok(if m.is_empty() {
        vec![Address::new("127.0.0.1", MASTER_PORT)]
    } else {
        m
    })
}

/// The storage backend a node uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adapter {
    Sqlite,
    Mysql,
}

/// `neostorage`'s configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageSettings {
    pub cluster: String,
    pub bind: Address,
    pub masters: Vec<Address>,
    pub adapter: Adapter,
    pub database: String,
    pub nid: Option<Nid>,
    pub wait: Option<i64>,
}

/// `neostorage`'s own options.
#[derive(Args, Debug, Clone, Default)]
pub struct StorageArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Storage backend: SQLite (default) or MySQL.
    #[arg(short = 'a', long)]
    pub adapter: Option<String>,
    /// Database: an SQLite path (or file: URI), or for MySQL
    /// [user[:password]@]database[@host[:port]] or with a socket path.
    #[arg(short = 'd', long)]
    pub database: Option<String>,
    /// Node id to use for a new database (testing).
    #[arg(short = 'i', long)]
    pub nid: Option<String>,
    /// Seconds to wait for the database server at start (-1: forever).
    #[arg(short = 'w', long)]
    pub wait: Option<String>,
}

impl StorageArgs {
    pub fn config(&self) -> Result<(StorageSettings, NodeOptions), ConfigError> {
        let s = self.server.load(
            NodeType::Storage,
            vec![
                ("adapter", self.adapter.clone()),
                ("database", self.database.clone()),
                ("nid", self.nid.clone()),
                ("wait", self.wait.clone()),
            ],
        )?;
        let adapter = match s
            .string("adapter")
            .as_deref()
            .map(str::to_lowercase)
            .as_deref()
        {
            None | Some("sqlite") => Adapter::Sqlite,
            Some("mysql") => Adapter::Mysql,
            Some(other) => {
                let src = s
                    .raw("adapter")
                    .map(|(_, src)| src.clone())
                    .unwrap_or(Source::Default);
                return err(format!("invalid value {other:?} for option \"adapter\" {src}: expected SQLite or MySQL"));
            }
        };
        let database = s.required("database")?;
        let database = match adapter {
            Adapter::Sqlite if !database.starts_with("file:") => {
                expand_home(&database).display().to_string()
            }
            _ => database,
        };
        let cfg = StorageSettings {
            cluster: s.required("cluster")?,
            bind: s
                .address("bind", Some(0))?
                .unwrap_or_else(|| Address::new("127.0.0.1", 0)),
            masters: masters_or_default(&s)?,
            adapter,
            database,
            nid: s.nid("nid")?,
            wait: s.number("wait")?,
        };
        Ok((
            cfg,
            NodeOptions {
                logfile: s.path("logfile"),
            },
        ))
    }
}

/// `neoadmin`'s options (all shared with the other servers).
#[derive(Args, Debug, Clone, Default)]
pub struct AdminArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

impl AdminArgs {
    pub fn config(&self) -> Result<(crate::actors::admin::AdminConfig, NodeOptions), ConfigError> {
        let s = self.server.load(NodeType::Admin, vec![])?;
        let cfg = crate::actors::admin::AdminConfig {
            cluster: s.required("cluster")?,
            bind: s
                .address("bind", Some(ADMIN_PORT))?
                .unwrap_or_else(|| Address::new("127.0.0.1", ADMIN_PORT)),
            masters: masters_or_default(&s)?,
        };
        Ok((
            cfg,
            NodeOptions {
                logfile: s.path("logfile"),
            },
        ))
    }
}

impl MasterArgs {
    pub fn config(&self) -> Result<(MasterConfig, NodeOptions), ConfigError> {
        let s = self.server.load(
            NodeType::Master,
            vec![
                ("autostart", self.autostart.clone()),
                ("replicas", self.replicas.clone()),
                ("partitions", self.partitions.clone()),
                ("nid", self.nid.clone()),
            ],
        )?;
        let partitions = s.number::<u32>("partitions")?.unwrap_or(100);
        if partitions == 0 || partitions > 65_535 {
            let src = s
                .raw("partitions")
                .map(|(_, src)| src.clone())
                .unwrap_or(Source::Default);
            return err(format!(
                "option \"partitions\" {src} must be between 1 and 65535"
            ));
        }
        let cfg = MasterConfig {
            cluster: s.required("cluster")?,
            bind: s
                .address("bind", Some(MASTER_PORT))?
                .unwrap_or_else(|| Address::new("127.0.0.1", MASTER_PORT)),
            masters: s.addresses("masters")?,
            autostart: s.number("autostart")?,
            replicas: s.number("replicas")?.unwrap_or(0),
            partitions,
            nid: s.nid("nid")?,
        };
        Ok((
            cfg,
            NodeOptions {
                logfile: s.path("logfile"),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "\
# A comment
[DEFAULT]
cluster: test
masters: 127.0.0.1:10000
  127.0.0.1:10001
replicas: 1
partitions = 12
database: shared

[master]
bind: 127.0.0.1:10000

[master2]
bind: 127.0.0.1
autostart: 2

[storage]
database: neo1
";

    fn ini(text: &str) -> Result<Ini, ConfigError> {
        Ini::parse(Path::new("neo.conf"), text)
    }

    /// Load a master's configuration from `text` written to a file, as `neomaster -f` does.
    fn master(
        text: &str,
        section: Option<&str>,
        mut cli: MasterArgs,
    ) -> Result<MasterConfig, ConfigError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("neo-config-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.conf");
        std::fs::write(&path, text).unwrap();
        cli.server.file = Some(path);
        cli.server.section = section.map(str::to_string);
        let r = cli.config().map(|(c, _)| c);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn reads_a_section_with_defaults_and_continuations() {
        let c = master(CONF, None, MasterArgs::default()).unwrap();
        assert_eq!(c.cluster, "test");
        assert_eq!(c.bind, Address::new("127.0.0.1", 10000));
        assert_eq!(
            c.masters,
            vec![
                Address::new("127.0.0.1", 10000),
                Address::new("127.0.0.1", 10001)
            ]
        );
        assert_eq!((c.replicas, c.partitions, c.autostart), (1, 12, None));
        let c = master(CONF, Some("master2"), MasterArgs::default()).unwrap();
        assert_eq!(c.bind, Address::new("127.0.0.1", MASTER_PORT));
        assert_eq!(c.autostart, Some(2));
    }

    #[test]
    fn the_command_line_wins() {
        let mut cli = MasterArgs::default();
        cli.server.cluster = Some("other".into());
        cli.autostart = Some("3".into());
        let c = master(CONF, None, cli).unwrap();
        assert_eq!((c.cluster.as_str(), c.autostart), ("other", Some(3)));
    }

    #[test]
    fn errors_name_the_option_and_the_place() {
        let e = master(
            &CONF.replace("partitions = 12", "partitions = twelve"),
            None,
            MasterArgs::default(),
        )
        .unwrap_err();
        assert!(
            e.0.contains("\"partitions\"")
                && e.0.contains("master.conf:7 [DEFAULT]")
                && e.0.contains("whole number"),
            "{e}"
        );
        let e = master(
            &format!("{CONF}colour: blue\n"),
            Some("storage"),
            MasterArgs::default(),
        )
        .unwrap_err();
        assert!(
            e.0.contains("unknown option \"colour\"") && e.0.contains("[storage]"),
            "{e}"
        );
        let e = master(CONF, Some("storage"), MasterArgs::default()).unwrap_err();
        assert!(
            e.0.contains("\"database\"") && e.0.contains("not a master option"),
            "{e}"
        );
        let e = master(CONF, Some("nowhere"), MasterArgs::default()).unwrap_err();
        assert!(e.0.contains("no section [nowhere]"), "{e}");
        let e = master(
            &CONF.replace("cluster: test", "ca: /x"),
            None,
            MasterArgs::default(),
        )
        .unwrap_err();
        assert!(
            e.0.contains("\"ca\"") && e.0.contains("not supported"),
            "{e}"
        );
        let e = master(
            &CONF.replace("cluster: test\n", ""),
            None,
            MasterArgs::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("needs option \"cluster\""), "{e}");
        let cli = MasterArgs {
            nid: Some("S1".into()),
            ..Default::default()
        };
        let e = master(CONF, None, cli).unwrap_err();
        assert!(
            e.0.contains("S1 is not a master id") && e.0.contains("on the command line"),
            "{e}"
        );
        let e = master(
            &CONF.replace("bind: 127.0.0.1:10000", "bind: 127.0.0.1:99999"),
            None,
            MasterArgs::default(),
        )
        .unwrap_err();
        assert!(e.0.contains("\"bind\"") && e.0.contains("port"), "{e}");
    }

    #[test]
    fn malformed_files_are_refused_with_their_line() {
        for (text, what) in [
            ("cluster: x\n", "before any [section]"),
            ("[a]\n[a]\n", "appears twice"),
            ("[a]\nx: 1\nx: 2\n", "appears twice"),
            ("[a\n", "malformed section"),
            ("[a]\njunk\n", "expected 'option: value'"),
            ("  indented\n", "continues no option"),
        ] {
            let e = ini(text).unwrap_err();
            assert!(
                e.0.contains(what) && e.0.contains("neo.conf:"),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn without_a_file() {
        let mut cli = MasterArgs::default();
        cli.server.cluster = Some("c".into());
        cli.server.masters = Some("h:1, h:2".into());
        let (c, _) = cli.config().unwrap();
        assert_eq!(c.masters.len(), 2);
        assert_eq!(c.partitions, 100);
        let e = MasterArgs {
            server: ServerArgs {
                section: Some("x".into()),
                ..Default::default()
            },
            ..Default::default()
        }
        .config()
        .unwrap_err();
        assert!(e.0.contains("needs a configuration file"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example shipped at the top of the repository is valid for every node type.
    #[test]
    fn the_example_neo_conf_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("neo.conf");
        let ini = Ini::read(&path).unwrap();
        for ty in [NodeType::Master, NodeType::Storage, NodeType::Admin] {
            Settings::load(ty, Some(&ini), None, &[]).unwrap_or_else(|e| panic!("{ty}: {e}"));
        }
        let args = MasterArgs {
            server: ServerArgs {
                file: Some(path),
                ..Default::default()
            },
            ..Default::default()
        };
        let (cfg, _) = args.config().unwrap();
        assert_eq!((cfg.cluster.as_str(), cfg.partitions), ("test", 12));
    }
}
