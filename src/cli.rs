//! The command line: parses arguments and dispatches to the library. `main` maps the result to
//! an exit code (2 for a bad config or bad arguments, 1 for a failure at run time).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, ConfigError, ConfigSource, EnvSource, ProcessEnv};

#[derive(Parser)]
#[command(
    name = "streamguard",
    version,
    about = "Sidecar proxy that hardens SSE and WebSocket apps"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(ConfigArg),
    /// Validate the config and print the effective config (secrets redacted).
    Check(ConfigArg),
    /// Print an HS256 JWT, for demos and tests.
    Token(TokenArgs),
    /// Run the bundled demo app on loopback with the proxy in front of it.
    Demo(ConfigArg),
}

#[derive(Args)]
struct ConfigArg {
    /// Config file.
    #[arg(
        short = 'c',
        long = "config",
        env = "STREAMGUARD_CONFIG",
        default_value = "proxy.toml"
    )]
    path: PathBuf,
}

#[derive(Args)]
struct TokenArgs {
    /// HMAC secret used to sign.
    #[arg(long)]
    secret: String,
    /// Subject (the user).
    #[arg(long)]
    sub: String,
    /// Comma-separated roles.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// Lifetime, e.g. `10m`, `2s`.
    #[arg(long, default_value = "10m", value_parser = parse_ttl)]
    ttl: Duration,
    /// Extra string claim `key=value`; repeatable.
    #[arg(long = "claim", value_parser = parse_claim)]
    claims: Vec<(String, String)>,
    /// Issuer (`iss`).
    #[arg(long)]
    iss: Option<String>,
    /// Audience (`aud`).
    #[arg(long)]
    aud: Option<String>,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    config::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_claim(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("--claim expects key=value, got {s:?}"))
}

/// Parses `std::env::args` and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(arg) => {
            let source = ConfigSource::new(arg.path, Arc::new(ProcessEnv));
            match load(&source) {
                Ok(cfg) => exit_on(crate::server::run(cfg, source)),
                Err(code) => code,
            }
        }
        Command::Check(arg) => match load(&ConfigSource::new(arg.path, Arc::new(ProcessEnv))) {
            Ok(cfg) => {
                print!("{}", config::show(&cfg));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Token(args) => {
            let now = crate::proxy::now_unix();
            match crate::token::mint(&crate::token::TokenSpec {
                secret: args.secret.as_bytes(),
                sub: &args.sub,
                roles: &args.roles,
                ttl: args.ttl,
                claims: &args.claims,
                iss: args.iss.as_deref(),
                aud: args.aud.as_deref(),
                now,
            }) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("streamguard token: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Demo(arg) => demo(arg),
    }
}

fn load(source: &ConfigSource) -> Result<Config, ExitCode> {
    source
        .load()
        .map_err(|e| report_config_error(&source.path, &e))
}

fn report_config_error(path: &std::path::Path, e: &ConfigError) -> ExitCode {
    eprintln!("streamguard: invalid config {}:\n{e}", path.display());
    ExitCode::from(2)
}

fn exit_on(result: Result<(), crate::server::RunError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamguard: {e}");
            ExitCode::from(1)
        }
    }
}

/// Environment for `demo`: the process environment, plus a random JWT secret when the operator
/// has not set one, so the demo works out of the box without a secret in `proxy.toml`.
struct DemoEnv {
    generated: HashMap<String, String>,
}

impl EnvSource for DemoEnv {
    fn var(&self, name: &str) -> Option<String> {
        ProcessEnv
            .var(name)
            .or_else(|| self.generated.get(name).cloned())
    }
}

fn demo(arg: ConfigArg) -> ExitCode {
    use rand::distr::{Alphanumeric, SampleString};
    let secret = ProcessEnv
        .var(crate::demo::SECRET_VAR)
        .unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), 48));
    // A reload of the demo reads the same generated secret.
    let env = DemoEnv {
        generated: HashMap::from([(crate::demo::SECRET_VAR.to_string(), secret.clone())]),
    };
    let source = ConfigSource::new(arg.path, Arc::new(env));
    let cfg = match load(&source) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    match crate::demo::start(&cfg, &secret) {
        Ok(()) => exit_on(crate::server::run(cfg, source)),
        Err(e) => {
            eprintln!("streamguard demo: {e}");
            ExitCode::from(1)
        }
    }
}
