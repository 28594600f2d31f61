//! The command line: argument parsing, output formatting and exit codes. Library errors become
//! `anyhow` errors here and nowhere else.

mod fetch_cmds;
mod lock_cmds;
mod materialize_cmds;
mod outputs;
mod progress;
mod python_cmds;
mod remote_cmds;
mod repro_cmds;
mod run_cmds;
mod store_cmds;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code of a failed operation (and of `fsck` finding problems).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of bad usage (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a materialize that refused to replace the user's edits (nothing changed).
pub const EXIT_EDITED: u8 = 5;
/// Exit code of a command that lacked a permission (a store it may not write or read, a
/// folder it cannot write): sysexits' EX_NOPERM.
pub const EXIT_PERMISSION: u8 = 77;

const ABOUT: &str = "Keep ComfyUI installs (code, custom nodes, Python packages, models) in a \
content-addressed store, once, named by BLAKE3.";

const EXAMPLES: &str = "\
Examples:
  comfystore init --path ./ComfyUI            # clone ComfyUI, pinned venv from the store
  comfystore lock ./ComfyUI --tag v1          # store everything, write lockfiles/comfy-v1.lock.json
  comfystore materialize lockfiles/comfy-v1.lock.json /workspace/v1   # a runnable copy, in seconds
  comfystore pin requirements.txt --lock lockfiles/comfy-v1.lock.json
  comfystore run-job test_input.json --lock lockfiles/comfy-v1.lock.json --dest /workspace/v1
  comfystore serve --lock lockfiles/comfy-v1.lock.json --dest /workspace/v1   # the RunPod worker
  comfystore diff lockfiles/comfy-v1.lock.json lockfiles/comfy-v2.lock.json
  comfystore show lockfiles/comfy-v1.lock.json
  comfystore repro env lockfiles/comfy-v1.lock.json ./ComfyUI   # does the install still match its lock?
  comfystore repro run lockfiles/comfy-v1.lock.json workflows/minimal.json --expect workflows/minimal.expected.json
  comfystore fetch lockfiles/comfy-v1.lock.json   # get what the store lacks (git, HTTP, mirrors)
  comfystore verify lockfiles/comfy-v1.lock.json ./ComfyUI --fix
  comfystore add ./ComfyUI --exclude models --exclude-name .git
  comfystore add model.safetensors            # prints b3:<id> and records its SHA-256
  comfystore ls b3:1f0c…                      # what a tree holds
  comfystore cat sha256:9e3b… > copy.bin      # an object by its SHA-256
  comfystore root add my-version b3:1f0c…     # keep it through gc
  comfystore gc --dry-run                     # what gc would free
  comfystore export b3:1f0c… -o v1.bundle     # carry it to an offline machine
  comfystore push gs://bucket/cs lockfiles/comfy-v1.lock.json   # share it through GCS (pull, --remote)
  comfystore --json stats

The store is --store DIR, else $COMFYSTORE_DIR, else $XDG_CACHE_HOME/comfystore (~/.cache/comfystore).
Logging: RUST_LOG=debug. Exit codes: 0 success, 1 failure (or problems found), 2 bad usage, 5 materialize refused to \
replace files you edited (nothing changed; --force keeps them beside the new ones).";

#[derive(Parser, Debug)]
#[command(name = "comfystore", version, about = ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Store directory (created on first use).
    #[arg(long, global = true, env = "COMFYSTORE_DIR", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars or informational messages.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Take no file locks in the store: for a store on a filesystem whose locks do not hold
    /// across hosts. Nothing is corrupted without them; workers may then download one model
    /// at the same time, and `gc` must not run while others write (store-layout.md).
    #[arg(long, global = true, env = "COMFYSTORE_NO_LOCKS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_locks: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    #[command(flatten)]
    Versions(LockCommand),
    #[command(flatten)]
    Sources(FetchCommand),
    #[command(flatten)]
    Python(python_cmds::PythonCommand),
    /// Is a version the same elsewhere? `repro env A B` compares locks and installs; `repro run
    /// LOCK WORKFLOW` compares a workflow's outputs across fresh runs and with a recording.
    #[command(subcommand)]
    Repro(repro_cmds::ReproCommand),
    /// Run one job from a file on a version, as the RunPod worker would, and print its answer.
    ///
    /// Materializes (or checks) the version from --lock at --dest, starts its ComfyUI,
    /// uploads the job's images, runs the workflow, and prints `{"images": [{filename, type:
    /// "base64", data, sha256, …}], "errors": […]}` (exit 0) or `{"error", "details"}` (exit
    /// 1). The input is worker-comfyui's: `input.workflow` (API format, object or JSON string),
    /// `input.images[] {name, image}` (base64, data URIs too), `input.timeout_s`. Outputs are
    /// also added to the store. ComfyUI is stopped afterwards.
    #[command(
        after_help = "Examples:\n  comfystore run-job test_input.json --lock lockfiles/comfy-v1.lock.json --dest /workspace/v1 --comfy-arg=--cpu\n  echo '{\"input\": {\"workflow\": …}}' | comfystore run-job - --dest /workspace/v1"
    )]
    RunJob(run_cmds::RunJobArgs),
    /// The RunPod serverless worker: keep ComfyUI running on a version and answer jobs.
    ///
    /// Materializes (or checks) --lock at --dest, starts ComfyUI, then speaks RunPod's worker
    /// protocol with the URLs the platform sets (RUNPOD_WEBHOOK_GET_JOB, _POST_OUTPUT, _PING,
    /// RUNPOD_AI_API_KEY, RUNPOD_POD_ID, RUNPOD_PING_INTERVAL): long-poll a job, run it as
    /// `run-job` does, post `{"output": …}` or `{"error": …}`; a heartbeat names the job in
    /// progress; a job the platform stops is interrupted. ComfyUI is restarted if it dies.
    /// SIGTERM finishes the job in progress, then stops ComfyUI. See docs/runpod.md.
    #[command(
        after_help = "Example (the container's command on RunPod):\n  COMFYSTORE_DIR=/runpod-volume/comfystore comfystore serve --lock /lockfiles/comfy-v1.lock.json --dest /workspace/comfyui --models-dir /runpod-volume/models"
    )]
    Serve(run_cmds::ServeArgs),
    /// Add files (→ object id) and directories (→ tree id) to the store.
    ///
    /// Prints `<id>\t<path>` per path. Symlinks inside a directory are recorded, never followed.
    /// Unchanged files are recognised by their stat data and not read again.
    #[command(
        after_help = "Examples:\n  comfystore add ./ComfyUI --exclude models --exclude-name .git --exclude-name __pycache__\n  comfystore add --root flux-dev ./models/flux1-dev.safetensors"
    )]
    Add(AddArgs),
    /// Write an object's bytes (or a tree's canonical manifest) to stdout.
    #[command(
        after_help = "Examples:\n  comfystore cat b3:af13…\n  comfystore cat sha256:e3b0… > model.safetensors"
    )]
    Cat {
        /// b3:<hex>, sha256:<hex>, or 64 hex digits (BLAKE3).
        id: String,
    },
    /// List a tree: kind, size, id and path of every entry.
    #[command(after_help = "Example:\n  comfystore ls b3:1f0c… | grep exec")]
    Ls {
        /// The tree id.
        id: String,
    },
    /// Objects, trees, stored bytes, logical bytes added and the dedup ratio.
    Stats,
    /// Rehash every object and check every tree; exit 1 if anything is wrong.
    #[command(
        after_help = "Examples:\n  comfystore fsck\n  comfystore fsck --repair     # move corrupt objects to quarantine/ so they can be fetched again"
    )]
    Fsck {
        /// Quarantine corrupt objects and trees, fix modes, remove stale aliases and temp files.
        #[arg(long)]
        repair: bool,
        /// Also recompute the SHA-256 of every object that has one recorded.
        #[arg(long)]
        sha256: bool,
    },
    /// Delete objects and trees that no root reaches and that are older than the grace period.
    #[command(
        after_help = "Examples:\n  comfystore gc --dry-run\n  comfystore gc --grace 0     # no grace period: only when nothing else writes"
    )]
    Gc {
        /// Report what would be freed; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreachable content younger than this (e.g. 30m, 1h, 2days, 0).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
    /// Build a runnable ComfyUI from a lockfile (or any stored tree) at DEST.
    ///
    /// From a lockfile: fetches what the store lacks (git trees, wheels, models; --offline
    /// fails before writing anything and lists what is missing), installs the Python
    /// environment once per package set from the store's wheels, then places ComfyUI at DEST,
    /// each node at DEST/custom_nodes/NAME, the environment at DEST/venv (or --venv) and the
    /// models at their paths (or in --models-dir, named by a generated
    /// extra_model_paths.yaml). Run it again with another lock to switch DEST in place: only
    /// differences are written, and files you added (outputs, inputs, settings) stay.
    /// Node install scripts (install.py) are never run: their dependencies come from the lock.
    ///
    /// Link classes: sources (ComfyUI, nodes) --link reflink (else copy: safe to edit); the
    /// environment --venv-link auto (reflink, else hardlink, else copy); models --models-link
    /// share (reflink, else hardlink, else symlink). Hardlinked and symlinked files share
    /// their inode with the store: never edit them in place.
    #[command(
        after_help = "Examples:\n  comfystore materialize lockfiles/comfy-v1.lock.json /workspace/v1\n  /workspace/v1/venv/bin/python /workspace/v1/main.py\n  comfystore materialize lockfiles/comfy-v2.lock.json /workspace/v1        # switch in place\n  comfystore materialize lockfiles/comfy-v1.lock.json /workspace/v1 --models-dir /runpod-volume/models\n  comfystore materialize lockfiles/comfy-v1.lock.json /workspace/v1 --offline --mirror /mnt/mirror\n  comfystore materialize b3:1f0c… /tmp/tree --link-prefix venv=hardlink   # any stored tree"
    )]
    Materialize(MaterializeArgs),
    /// Compare a materialized directory with its tree: missing, modified and extra files.
    ///
    /// Uses the stat cache, so unchanged files are not read. Exits 1 if anything is missing or
    /// modified (extra files alone are fine).
    #[command(
        after_help = "Examples:\n  comfystore status /workspace/v1\n  comfystore status --verify /workspace/v1   # rehash every file"
    )]
    Status {
        dest: PathBuf,
        /// Rehash every file instead of trusting unchanged stat data.
        #[arg(long)]
        verify: bool,
    },
    /// Remove what `materialize` made in a directory, and its GC root.
    ///
    /// Files you added (and files you modified) stay and are listed, unless --all.
    #[command(
        after_help = "Examples:\n  comfystore remove /workspace/v1\n  comfystore remove --all /workspace/v1   # also user files"
    )]
    Remove {
        dest: PathBuf,
        /// Also delete files the tree does not list, and modified ones.
        #[arg(long)]
        all: bool,
    },
    /// Manage GC roots: named pins of trees and objects.
    #[command(subcommand)]
    Root(RootCommand),
    /// Manage the redb index (an accelerator that can always be rebuilt from the files).
    #[command(subcommand)]
    Index(IndexCommand),
    /// Write the closure of trees/objects to a zstd-compressed bundle.
    #[command(
        after_help = "Examples:\n  comfystore export b3:1f0c… b3:77aa… -o version.bundle\n  comfystore export b3:1f0c… -o - | ssh host comfystore import -"
    )]
    Export {
        /// Trees or objects to export (with everything they reference).
        #[arg(required = true)]
        ids: Vec<String>,
        /// Output file, or - for stdout.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Upload the closure of locks or ids to a GCS bucket, in the store's layout under PREFIX.
    ///
    /// Trees, objects, SHA-256 aliases, source records, and each LOCK itself. Only what the
    /// bucket lacks is sent; uploads are conditional creates, so pushers on several machines
    /// can share a bucket. Credentials and retries as for GCS outputs (docs/runpod.md).
    #[command(
        after_help = "Examples:\n  comfystore push gs://my-bucket/comfystore lockfiles/comfy-v1.lock.json\n  comfystore --json push gs://my-bucket/comfystore b3:1f0c…"
    )]
    Push(remote_cmds::PushArgs),
    /// Fill the store from a GCS bucket written by `push`, verifying every tree and object.
    #[command(
        after_help = "Examples:\n  comfystore pull gs://my-bucket/comfystore lockfiles/comfy-v1.lock.json\n  comfystore pull gs://my-bucket/comfystore b3:1f0c… --remote-jobs 8"
    )]
    Pull(remote_cmds::PullArgs),
    /// Add a bundle's content to the store, verifying every hash first.
    #[command(
        after_help = "Examples:\n  comfystore import version.bundle --root v1\n  comfystore import --dry-run version.bundle   # verify only"
    )]
    Import {
        /// Bundle file, or - for stdin.
        file: PathBuf,
        /// Verify the bundle without storing anything.
        #[arg(long)]
        dry_run: bool,
        /// Also create a root with the bundle's root ids.
        #[arg(long, value_name = "NAME")]
        root: Option<String>,
    },
}

/// Getting what the store lacks, and checking installs against their lock.
#[derive(Subcommand, Debug)]
pub enum FetchCommand {
    /// Download a file (a model) into the store, verified, and remember its URL.
    ///
    /// Resumes dropped connections (Range + If-Range), retries transient failures with
    /// backoff, honours Retry-After, and refuses bytes whose hash is not the one given. Tokens
    /// come from the environment and are sent only to their own host: HF_TOKEN
    /// (huggingface.co), CIVITAI_API_TOKEN (civitai.com), COMFYSTORE_TOKENS=host=token,...
    /// A later `lock` lists the URL as a source of this content.
    #[command(
        after_help = "Examples:\n  comfystore add-url https://huggingface.co/org/repo/resolve/main/model.safetensors --sha256 31e3…\n  comfystore add-url https://civitai.com/api/download/models/128078 --path models/loras/style.safetensors --comfy /workspace/ComfyUI"
    )]
    AddUrl(AddUrlArgs),
    /// Copy the models of a Hugging Face hub cache into the store, with their sources, without
    /// downloading them again.
    ///
    /// Every LFS file (`models--ORG--NAME/blobs/SHA256`) is read once (BLAKE3 and SHA-256
    /// together), checked against its name, and remembered with the pinned URL its snapshot
    /// link gives (`https://huggingface.co/ORG/NAME/resolve/REVISION/PATH`), so a later `lock`
    /// of a model with those bytes names that source. The cache's files are only read. A GC
    /// root `hf-cache/…` per cache keeps them. Default caches: $HF_HUB_CACHE, $HF_HOME/hub,
    /// ~/.cache/huggingface/hub, /runpod-volume/huggingface-cache/hub (those that exist).
    #[command(after_help = "Examples:
  comfystore import-hf-cache
  comfystore import-hf-cache /runpod-volume/huggingface-cache/hub --json")]
    ImportHfCache {
        /// Hub cache folders (the folder holding models--… folders).
        #[arg(value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
    /// Make the store complete for a lockfile: trees from git, models and wheels over HTTP.
    ///
    /// Says what the store lacks, gets it and reports. Source trees are rebuilt from their
    /// repo and commit (a shallow fetch; a full one where the server refuses) and must give
    /// the lock's tree id exactly. Models are downloaded in parallel and verified against the
    /// lock's SHA-256, BLAKE3 and size; wheels too, when the environment tree is missing.
    /// Offline mirrors (--mirror DIR) and HTTP mirrors (--mirror-url) are tried first.
    /// Exit 0 when the store holds everything, 1 when something is still missing.
    /// Git tokens: GITHUB_TOKEN (github.com), GIT_TOKEN (any https host; TOKEN or USER:TOKEN).
    #[command(
        after_help = "Examples:\n  comfystore fetch lockfiles/comfy-v1.lock.json\n  comfystore fetch lockfiles/comfy-v1.lock.json --only models --jobs 8\n  comfystore fetch lockfiles/comfy-v1.lock.json --mirror /mnt/usb/comfy-mirror --offline\n  comfystore fetch lockfiles/comfy-v1.lock.json --mirror-url http://mirror.internal/sha256   # tried first: <url>/<sha256>\n  comfystore fetch lockfiles/comfy-v1.lock.json --offline   # what is missing?\n  comfystore fetch lockfiles/comfy-imported.lock.json --update-lock   # write in the blake3 of models named by sha256"
    )]
    Fetch {
        lock: PathBuf,
        #[command(flatten)]
        sources: SourceArgs,
        /// Rewrite LOCK with the blake3 of each model it names by sha256 alone (an imported
        /// lock) once the store has the file (canonical bytes, written to a temporary file
        /// then renamed over LOCK).
        #[arg(long)]
        update_lock: bool,
    },
    /// Check a ComfyUI folder against its lockfile; with --fix, restore it.
    ///
    /// Finds missing files, files whose content is not the lock's, and model files the lock
    /// does not list. Unchanged files are vouched for by the stat cache (--full rehashes).
    /// With --fix, what the store lacks is fetched (unless --offline), then missing and
    /// corrupt files are restored from the store; files the lock does not list are never
    /// touched. DEST may be a materialized version or your own install locked in place.
    /// Exit codes: 0 clean, 3 fixed, 4 still broken, 1 error, 2 bad usage.
    #[command(
        after_help = "Examples:\n  comfystore verify lockfiles/comfy-v1.lock.json /workspace/ComfyUI\n  comfystore verify lockfiles/comfy-v1.lock.json /workspace/ComfyUI --only models --fix\n  comfystore verify lockfiles/comfy-v1.lock.json /workspace/ComfyUI --full --json\n  comfystore verify lockfiles/comfy-v1.lock.json /workspace/ComfyUI --fix --offline --mirror /mnt/mirror"
    )]
    Verify(VerifyArgs),
    /// Write an offline mirror of a lockfile: models, wheels (PEP 503 index and flat
    /// find-links), and a bundle of its trees.
    ///
    /// Fetches what the store lacks first. Files are linked from the store where the
    /// filesystem allows (reflink, else hardlink), else copied. Several locks can share one
    /// mirror. On the machine without network:
    ///   comfystore fetch LOCK --mirror DIR --offline
    ///   pip install --no-index --find-links DIR/wheels PACKAGE     (or --index-url file://DIR/simple)
    /// Served over HTTP (python -m http.server -d DIR), DIR/sha256/ works with --mirror-url.
    #[command(
        after_help = "Examples:\n  comfystore mirror lockfiles/comfy-v1.lock.json /mnt/usb/comfy-mirror\n  comfystore mirror lockfiles/comfy-v1.lock.json /srv/mirror --only models"
    )]
    Mirror {
        lock: PathBuf,
        dir: PathBuf,
        #[command(flatten)]
        sources: SourceArgs,
    },
}

// `add-url`'s arguments (no doc comment: the subcommand's own text is its help).
#[derive(Args, Debug)]
pub struct AddUrlArgs {
    pub url: String,
    /// Expected SHA-256 (64 hex): anything else is refused and not stored.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Expected BLAKE3 (64 hex, or b3:<hex>).
    #[arg(long, value_name = "HEX")]
    pub blake3: Option<String>,
    /// Also place the file at this path of the ComfyUI folder (e.g. models/loras/x.safetensors).
    #[arg(long, value_name = "REL_PATH")]
    pub path: Option<String>,
    /// The ComfyUI folder, for --path.
    #[arg(long, env = "COMFY_HOME", value_name = "DIR")]
    pub comfy: Option<PathBuf>,
    #[command(flatten)]
    pub http: HttpArgs,
}

// `verify`'s arguments (no doc comment: the subcommand's own text is its help).
#[derive(Args, Debug)]
pub struct VerifyArgs {
    pub lock: PathBuf,
    /// The ComfyUI folder.
    #[arg(env = "COMFY_HOME")]
    pub dest: PathBuf,
    /// Restore missing and corrupt files (fetching what the store lacks).
    #[arg(long)]
    pub fix: bool,
    /// Rehash every file instead of trusting unchanged stat data.
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub sources: SourceArgs,
}

/// Where fetching commands look, and which part of a lock they handle.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Only this part of the lock.
    #[arg(long, value_enum)]
    pub only: Option<comfystore::lockfile::Part>,
    /// An offline mirror folder written by `comfystore mirror`, tried first (repeatable).
    #[arg(long, value_name = "DIR")]
    pub mirror: Vec<PathBuf>,
    /// An HTTP mirror holding files by SHA-256 (<url>/<sha256>), tried before a file's own sources (repeatable).
    #[arg(long, value_name = "URL")]
    pub mirror_url: Vec<String>,
    /// A bucket written by `push` (gs://BUCKET/PREFIX), tried before every other source for
    /// the trees and files the store lacks.
    #[arg(long, env = "COMFYSTORE_REMOTE", value_name = "gs://BUCKET/PREFIX")]
    pub remote: Option<String>,
    #[command(flatten)]
    pub remote_gcs: remote_cmds::RemoteArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// `materialize`'s arguments.
#[derive(Args, Debug)]
pub struct MaterializeArgs {
    /// A lockfile, or a stored tree id (b3:…).
    pub source: String,
    /// Destination directory (created if missing; must be empty or materialized before).
    pub dest: PathBuf,
    /// Link mode for sources (and every path of a plain tree without a --link-prefix rule).
    #[arg(long, value_enum, default_value = "reflink")]
    pub link: comfystore::place::LinkMode,
    /// Link mode for the environment (lockfiles).
    #[arg(long, value_enum, default_value = "auto")]
    pub venv_link: comfystore::place::LinkMode,
    /// Link mode for models (lockfiles).
    #[arg(long, value_enum, default_value = "share")]
    pub models_link: comfystore::place::LinkMode,
    /// PREFIX=MODE: link mode for a path prefix (repeatable), e.g. custom_nodes=copy.
    #[arg(long, value_name = "PREFIX=MODE", value_parser = comfystore::place::LinkPolicy::parse_rule)]
    pub link_prefix: Vec<comfystore::place::PrefixRule>,
    /// Place the environment here instead of DEST/venv.
    #[arg(long, value_name = "DIR")]
    pub venv: Option<PathBuf>,
    /// Keep models in this shared folder (e.g. on a network volume) and write
    /// DEST/extra_model_paths.yaml pointing ComfyUI at it. Nothing there is ever removed.
    #[arg(long, value_name = "DIR", env = "COMFYSTORE_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Base interpreter for the environment (path, program or version); default: one that
    /// fits the lock (pythonX.Y on PATH, or one uv manages).
    #[arg(long, env = "COMFYSTORE_PYTHON", value_name = "PYTHON")]
    pub python: Option<String>,
    /// Installer for an environment the store lacks.
    #[arg(long, value_enum, default_value = "auto")]
    pub installer: comfystore::python::Resolver,
    /// Switch even when files the previous version placed were edited (or the user put files
    /// where the new version has some): each is kept beside the new file as
    /// NAME.comfystore-kept-<unix time> and named in the summary. Without it such a switch
    /// is refused (exit 5), naming the files, and DEST is left as it was.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub sources: SourceArgs,
}

/// Versions as lockfiles.
#[derive(Subcommand, Debug)]
pub enum LockCommand {
    /// Lock a ComfyUI install: store every part of it and write a lockfile.
    ///
    /// Stores the ComfyUI source (as git would check it out, without models/, custom_nodes/,
    /// user data and the venv), every custom node, the venv and every model, then writes
    /// lockfiles/comfy-TAG.lock.json. Models are adopted in place: a reflink, else a hardlink
    /// (the file becomes read-only), so locking 200 GB of models does not use 200 GB more.
    /// Rerunning on an unchanged install reads nothing and writes the same bytes.
    #[command(
        after_help = "Examples:\n  comfystore lock ./ComfyUI --tag v1\n  comfystore lock /workspace/ComfyUI --tag prod-2026-11 --models-dir /runpod-volume/models --sources sources.yaml\n  comfystore lock ./ComfyUI --tag v1 --adopt reflink   # never touch model files (copy where reflinks fail)\n\nA --sources file maps a model's lock path or SHA-256 to URLs:\n  models/checkpoints/sd15.safetensors: https://huggingface.co/…/resolve/main/sd15.safetensors\n  9e3b…(64 hex): [https://mirror.internal/x, https://civitai.com/api/download/models/1234]"
    )]
    Lock(LockArgs),
    /// Compare two lockfiles: exit 0 when equal, 1 when they differ, 2 on error (like diff).
    #[command(
        after_help = "Example:\n  comfystore diff lockfiles/comfy-v1.lock.json lockfiles/comfy-v2.lock.json\n\nLines read: + added, - removed, ~ changed (moved to another commit, upgraded, downgraded, …)."
    )]
    Diff { a: PathBuf, b: PathBuf },
    /// Summarize a lockfile: counts, sizes, and what the store lacks.
    #[command(after_help = "Example:\n  comfystore show lockfiles/comfy-v1.lock.json")]
    Show { lock: PathBuf },
    /// Turn another tool's lock into a lockfile; the format is detected.
    ///
    /// Reads ComfyUI-Manager snapshots (JSON or YAML), comfy-pack packages (.cpack.zip or their
    /// snapshot.json), comfy-cli's comfy.lock.yaml and comfy-cli build definitions
    /// (distribution-definition/0). They know commits, node repos, registry packs and pip pins,
    /// but no trees: the lock they give names what to fetch. Whatever the lock cannot hold is
    /// named in a warning (docs/interop.md).
    #[command(
        visible_alias = "import-from",
        after_help = "Examples:\n  comfystore import-snapshot user/default/ComfyUI-Manager/snapshots/2026-11-01_12-00-00_snapshot.json --tag v1\n  comfystore import-from workflow.cpack.zip --tag pixel-art\n  comfystore import-from comfy-build.yaml --tag build1 -o build1.lock.json"
    )]
    ImportSnapshot {
        snapshot: PathBuf,
        #[arg(long)]
        tag: String,
        /// Output file (default lockfiles/comfy-TAG.lock.json).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The ComfyUI repository the snapshot's commit is in (a snapshot does not say; a fork's
        /// commit is not upstream's). Default: upstream, with a warning.
        #[arg(long, value_name = "URL")]
        comfyui_repo: Option<String>,
        /// Pin what the file names by tag or branch (a build definition's baseComfyVersion, a
        /// node's gitRef) to the commit its repository gives now (`git ls-remote`). Without
        /// it such sources are left out, each named in a warning.
        #[arg(long)]
        resolve_refs: bool,
    },
    /// Write a lockfile as a ComfyUI-Manager snapshot (for cm-cli restore-snapshot, comfy-cli),
    /// or as comfy-cli's build definition (`--format comfy-build`).
    #[command(
        after_help = "Example:\n  comfystore export-snapshot lockfiles/comfy-v1.lock.json -o v1_snapshot.json"
    )]
    ExportSnapshot {
        lock: PathBuf,
        /// Output file, or - for stdout (the default).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// json (what Manager saves), yaml (the snapshot under `custom_nodes:`, as Manager's
        /// YAML restore reads it) or comfy-build (comfy-cli's build definition). Default: by
        /// the output's name (comfy-build.yaml, else .yaml/.yml), else json.
        #[arg(long, value_enum)]
        format: Option<lock_cmds::SnapshotFormat>,
    },
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// The ComfyUI folder.
    #[arg(env = "COMFY_HOME", value_name = "COMFY_DIR")]
    pub comfy_dir: Option<PathBuf>,
    /// Version tag: names the lockfile (comfy-TAG.lock.json) and its GC root (lock/TAG).
    #[arg(long)]
    pub tag: String,
    /// The venv (default COMFY_DIR/venv, COMFY_DIR/.venv, else $VIRTUAL_ENV).
    #[arg(long, value_name = "DIR")]
    pub venv: Option<PathBuf>,
    /// Do not scan the Python environment. The python section of the lockfile being
    /// rewritten (-o) is kept, with a warning, unless --drop-python.
    #[arg(long, conflicts_with = "venv")]
    pub no_python: bool,
    /// When no venv is scanned, drop the python section of the lockfile being rewritten.
    #[arg(long, conflicts_with = "venv")]
    pub drop_python: bool,
    /// Models folder, if not COMFY_DIR/models (its files lock as models/...).
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// JSON or YAML map of model path or SHA-256 to URL(s).
    #[arg(long, value_name = "FILE")]
    pub sources: Option<PathBuf>,
    /// Another Hugging Face hub cache to find model sources in (repeatable).
    #[arg(long, value_name = "DIR")]
    pub hf_cache: Vec<PathBuf>,
    /// How models get into the store: auto (reflink, else hardlink, else copy), reflink (else copy), copy.
    #[arg(long, value_enum, default_value = "auto")]
    pub adopt: comfystore::store::AdoptMode,
    /// Output file (default lockfiles/comfy-TAG.lock.json).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Do not create the GC root lock/TAG.
    #[arg(long)]
    pub no_root: bool,
    /// Replace the GC root lock/TAG even when it keeps another lockfile that still exists
    /// (gc may then free what only that lockfile names).
    #[arg(long)]
    pub force: bool,
    /// Leave packages installed from an index unpinned. By default each is pinned to its wheel
    /// (file, URL, sha256) by resolving `name==version` for the venv's interpreter against the
    /// indexes below, without downloading wheels the index publishes a sha256 for; that is
    /// what lets `fetch` and `materialize` rebuild the environment on a fresh machine. A
    /// package no index offers stays unpinned, with a warning naming it.
    #[arg(long, env = "COMFYSTORE_NO_PIN_WHEELS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_pin_wheels: bool,
    /// Pin packages to wheels (the default; kept for old scripts).
    #[arg(long, hide = true, overrides_with = "no_pin_wheels")]
    pub pin_wheels: bool,
    /// Package index to pin from (default: the resolver's, PyPI). Recorded in the lock without
    /// credentials.
    #[arg(
        long,
        value_name = "URL",
        env = "COMFYSTORE_INDEX_URL",
        conflicts_with = "no_pin_wheels"
    )]
    pub index_url: Option<String>,
    /// Another index to pin from (repeatable; the environment variable takes a space-separated
    /// list), e.g. https://download.pytorch.org/whl/cu128 for CUDA builds of torch. Recorded in
    /// the lock without credentials.
    #[arg(
        long,
        value_name = "URL",
        env = "COMFYSTORE_EXTRA_INDEX_URL",
        value_delimiter = ' ',
        conflicts_with = "no_pin_wheels"
    )]
    pub extra_index_url: Vec<String>,
    /// Local wheels to pin from (repeatable).
    #[arg(long, value_name = "DIR", conflicts_with = "no_pin_wheels")]
    pub wheels_dir: Vec<PathBuf>,
    /// Pin from local wheels and the store only.
    #[arg(long, conflicts_with = "no_pin_wheels")]
    pub offline: bool,
    /// Refuse (exit 1, no lockfile written) unless the lock can be rebuilt from its own
    /// sources on a fresh machine: trees from clean git commits, models from URLs, packages
    /// from pinned wheels. Each item that cannot is named.
    #[arg(long)]
    pub portable: bool,
}

/// How downloads behave (shared by the commands that download).
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Retries per source after the first try (connection errors, stalls, 5xx, 429).
    #[arg(long, default_value_t = 5, env = "COMFYSTORE_RETRIES")]
    pub retries: u32,
    /// Abandon (and retry) an attempt that receives nothing for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "COMFYSTORE_HTTP_TIMEOUT")]
    pub timeout: std::time::Duration,
    /// Downloads at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Never touch the network: fail, naming what would be downloaded.
    #[arg(long)]
    pub offline: bool,
    /// Connections per large file (≥ 64 MiB): byte ranges fetched in parallel, hashed in
    /// order. Helps where one stream is throttled (CDNs); 1 = one stream.
    #[arg(long, default_value_t = 1, env = "COMFYSTORE_CONNECTIONS")]
    pub connections: usize,
    /// A folder a lock's `file://` sources may be read from (repeatable; the variable takes
    /// several, `:`-separated). Besides --mirror folders, no other local file is read.
    #[arg(
        long,
        value_name = "DIR",
        env = "COMFYSTORE_ALLOW_FILE",
        value_delimiter = ':'
    )]
    pub allow_file: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// Files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Leave out this path, relative to the directory added (repeatable).
    #[arg(long, value_name = "REL_PATH")]
    pub exclude: Vec<String>,
    /// Leave out files and directories with this name anywhere (repeatable), e.g. .git.
    #[arg(long, value_name = "NAME")]
    pub exclude_name: Vec<String>,
    /// Compute SHA-256 for every file of a tree too (single files always get it).
    #[arg(long)]
    pub sha256: bool,
    /// Create (or replace) a GC root with the added ids.
    #[arg(long, value_name = "NAME")]
    pub root: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RootCommand {
    /// Create or replace root NAME, keeping the given ids.
    #[command(after_help = "Example:\n  comfystore root add versions/v1 b3:1f0c… b3:77aa…")]
    Add {
        name: String,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove root NAME.
    Rm { name: String },
    /// List roots.
    Ls,
}

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// Recreate the index from the store's files.
    Rebuild,
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    init_logging();
    let json = cli.json;
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
            }
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
    }
}

/// The exit code of a failed command: 5 for a switch refused over the user's edits, 77 for a
/// missing permission, else 1.
fn exit_code_of(e: &anyhow::Error) -> u8 {
    let edited = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<comfystore::Error>(),
            Some(comfystore::Error::Place(
                comfystore::place::Error::Edited { .. }
            ))
        ) || matches!(
            c.downcast_ref::<comfystore::place::Error>(),
            Some(comfystore::place::Error::Edited { .. })
        )
    });
    let denied = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    });
    if edited {
        EXIT_EDITED
    } else if denied {
        EXIT_PERMISSION
    } else {
        EXIT_FAILURE
    }
}

/// Run the command line's command: one handler per command; its exit code.
fn dispatch(cli: &Cli) -> anyhow::Result<u8> {
    let (json, quiet) = (cli.json, cli.quiet);
    match &cli.command {
        // Lockfile commands open the store themselves, only when they need one.
        Command::Versions(cmd) => match cmd {
            LockCommand::Lock(a) => lock_cmds::lock(cli, a),
            LockCommand::Diff { a, b } => lock_cmds::diff(cli, a, b),
            LockCommand::Show { lock } => lock_cmds::show(cli, lock),
            LockCommand::ImportSnapshot {
                snapshot,
                tag,
                output,
                comfyui_repo,
                resolve_refs,
            } => lock_cmds::import_snapshot(
                cli,
                snapshot,
                tag,
                output.as_deref(),
                comfyui_repo.as_deref(),
                *resolve_refs,
            ),
            LockCommand::ExportSnapshot {
                lock,
                output,
                format,
            } => lock_cmds::export_snapshot(lock, output.as_deref(), *format),
        },
        Command::Sources(cmd) => match cmd {
            FetchCommand::AddUrl(a) => fetch_cmds::add_url(cli, a),
            FetchCommand::ImportHfCache { dirs } => fetch_cmds::import_hf_cache(cli, dirs),
            FetchCommand::Fetch {
                lock,
                sources,
                update_lock,
            } => fetch_cmds::fetch(cli, lock, sources, *update_lock),
            FetchCommand::Verify(a) => fetch_cmds::verify(cli, a),
            FetchCommand::Mirror { lock, dir, sources } => {
                fetch_cmds::mirror(cli, lock, dir, sources)
            }
        },
        Command::Python(cmd) => match cmd {
            python_cmds::PythonCommand::Pin(a) => python_cmds::pin(cli, a),
            python_cmds::PythonCommand::Init(a) => python_cmds::init(cli, a),
            python_cmds::PythonCommand::Env(a) => python_cmds::env(cli, a),
        },
        Command::Repro(repro_cmds::ReproCommand::Env { a, b }) => repro_cmds::env(cli, a, b),
        Command::Repro(repro_cmds::ReproCommand::Run(args)) => repro_cmds::run(cli, args),
        Command::RunJob(args) => run_cmds::run_job(cli, args),
        Command::Serve(args) => run_cmds::serve(cli, args),
        Command::Add(args) => store_cmds::add(&open_store(cli)?, args, json),
        Command::Cat { id } => store_cmds::cat(&open_store(cli)?, id),
        Command::Ls { id } => store_cmds::ls(&open_store(cli)?, id, json),
        Command::Stats => store_cmds::stats(&open_store(cli)?, json),
        Command::Fsck { repair, sha256 } => {
            let opts = comfystore::store::FsckOptions {
                repair: *repair,
                sha256: *sha256,
            };
            store_cmds::fsck(cli, &open_store(cli)?, &opts)
        }
        Command::Gc { dry_run, grace } => {
            let opts = comfystore::store::GcOptions {
                grace: *grace,
                dry_run: *dry_run,
            };
            store_cmds::gc(&open_store(cli)?, &opts, json)
        }
        Command::Materialize(args) => {
            materialize_cmds::materialize(&open_store(cli)?, args, json, quiet)
        }
        Command::Status { dest, verify } => {
            materialize_cmds::status(&open_store(cli)?, dest, *verify, json)
        }
        Command::Remove { dest, all } => {
            materialize_cmds::remove(&open_store(cli)?, dest, *all, json)
        }
        Command::Root(cmd) => store_cmds::root(&open_store(cli)?, cmd, json),
        Command::Index(IndexCommand::Rebuild) => store_cmds::rebuild_index(&open_store(cli)?, json),
        Command::Push(a) => remote_cmds::push(cli, a),
        Command::Pull(a) => remote_cmds::pull(cli, a),
        Command::Export { ids, output } => store_cmds::export(cli, &open_store(cli)?, ids, output),
        Command::Import {
            file,
            dry_run,
            root,
        } => store_cmds::import(cli, &open_store(cli)?, file, *dry_run, root.as_deref()),
    }
}

/// Open (or create) the store the command line names.
pub(crate) fn open_store(cli: &Cli) -> comfystore::Result<comfystore::store::Store> {
    let dir = cli.store.clone().unwrap_or_else(default_store_dir);
    let opts = comfystore::store::StoreOptions {
        no_locks: cli.no_locks,
        ..Default::default()
    };
    let store = comfystore::store::Store::open(&dir, &opts)?;
    Ok(store.with_reporter(progress::reporter(cli.quiet || cli.json)))
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The default store directory: `$XDG_CACHE_HOME/comfystore`, else `~/.cache/comfystore`.
pub fn default_store_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("comfystore");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/comfystore"),
        None => PathBuf::from(".comfystore"),
    }
}
