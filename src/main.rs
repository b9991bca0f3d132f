//! The `recheck` binary: parse, set up logs, run the command, map the result to an exit code.

use std::io::Write;
use std::process::ExitCode;

use recheck::cli::{Cli, Command, LogFormat};
use recheck::config::{self, ArgsError};

/// jemalloc instead of glibc's malloc: ~11 % less CPU per check (Cargo.toml says why this one).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them), both measured in BENCHMARKS.md ("memory flat with the run's length"):
/// - freed pages go back to the system after 0.5 s instead of 10 s: a run's working set is
///   flat (O(concurrency)), so pages kept longer only make its resident size depend on how
///   long it has run (peak RSS at 1,000,000 items 1.07 × that of 20,000, 1.13 × before);
/// - each thread keeps at least 32 freed blocks of every small size, not 20: hyper
///   allocates an 8 KiB read buffer per response, and with more requests in flight than
///   cached blocks most of them went through the shared arena (1.4 % fewer instructions
///   per check, the same peak RSS).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 46] = b"dirty_decay_ms:500,tcache_nslots_small_min:32\0";

fn main() -> ExitCode {
    let cli = match config::parse_args(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(ArgsError::Clap(e))
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                    | clap::error::ErrorKind::MissingSubcommand
            ) =>
        {
            // Bare `recheck`: the usage with its commands, as an error (exit 2).
            let mut cmd = <Cli as clap::CommandFactory>::command();
            eprintln!("{}", cmd.render_help());
            return ExitCode::from(2);
        }
        Err(ArgsError::Clap(e)) if e.use_stderr() => return fail(&config::one_line(&e)),
        Err(ArgsError::Clap(e)) => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Config(e)) => return fail(&format!("{e:#}")),
    };
    init_logs(&cli);
    for warning in config::unknown_env_vars() {
        tracing::warn!("{warning}");
    }
    // One thread for every check, the pool and the writer: no wake-up crosses threads
    // (SQLite, imports and file writes run on the blocking pool). Measured in
    // BENCHMARKS.md ("CPU per check"): less CPU per check than the multi-thread runtime, and
    // the same checks/s, since recheck spends a fraction of a core per thousand checks.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        // `recheck ... | head` closing the pipe is not an error.
        Err(e) if e.chain().any(is_broken_pipe) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Run(args) => {
            let cfg = recheck::RunConfig::from_args(&args)?;
            let (format, fail_on) = (cfg.format, cfg.fail_on);
            let stop = tokio_util::sync::CancellationToken::new();
            recheck::shutdown::listen(stop.clone());
            let summary = recheck::run(cfg, stop).await?;
            // docs/reference.md §4.2: a summary that cannot be printed (stdout closed) does
            // not change the exit code, which says what happened to the store.
            if let Err(e) = summary
                .write(format, &mut stdout)
                .and_then(|()| stdout.flush())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                tracing::warn!("cannot print the summary: {e}");
            }
            Ok(recheck::exit_code(&summary, fail_on))
        }
        Command::Status(args) => recheck::commands::status(&args, &mut stdout)
            .await
            .map(|()| 0),
        Command::Import(args) => recheck::commands::import(&args, &mut stdout)
            .await
            .map(|()| 0),
        Command::Init(args) => recheck::commands::init(&args, &mut stdout)
            .await
            .map(|()| 0),
        Command::Man => {
            man_page(&mut stdout)?;
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "recheck", &mut stdout);
            Ok(0)
        }
    }
}

/// One man page with everything: the top-level options, then a section per command with
/// its synopsis and every option (no `recheck-run(1)` pages to look for elsewhere).
fn man_page(out: &mut dyn Write) -> std::io::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let top = clap_mangen::Man::new(cmd.clone());
    top.render_title(out)?;
    top.render_name_section(out)?;
    top.render_synopsis_section(out)?;
    top.render_description_section(out)?;
    top.render_options_section(out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("recheck {}", sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let page = clap_mangen::Man::new(sub.clone().bin_name(name));
        page.render_description_section(out)?;
        page.render_synopsis_section(out)?;
        page.render_options_section(out)?;
    }
    top.render_extra_section(out)?;
    top.render_version_section(out)
}

fn init_logs(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let level = match (cli.global.verbose, cli.global.quiet) {
        (0, 0) => "info",
        (_, 1) => "warn",
        (_, q) if q >= 2 => "error",
        (1, _) => "debug",
        _ => "trace",
    };
    // sqlx's own warnings may echo URL parameters, values included: errors only.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("recheck={level},warn,sqlx=error")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Whole lines to stderr, printed above the progress bar while one is shown.
        .with_writer(recheck::report::progress::LogWriter)
        .with_target(false);
    match cli.global.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("recheck: error: {msg}");
    ExitCode::from(2)
}
