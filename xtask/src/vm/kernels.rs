//! Debian cloud kernels for the guests. Each suite's `linux-image-cloud-amd64` metapackage names
//! the current versioned image; it is fetched from the Debian mirror the host's apt already uses
//! (with the suite name changed), through a private apt state so the host's apt is untouched,
//! and only the `vmlinuz` and a few modules are kept, in a cache that later runs reuse without
//! any network.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const METAPACKAGE: &str = "linux-image-cloud-amd64";
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Suite names that identify an apt source as a Debian archive (not -security, -updates, or a
/// third-party repository).
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

/// Modules the guests load at boot, with their dependencies: the tracer's start-up scan and
/// reconcile read sockets through sock_diag (inet_diag + tcp_diag, modules in Debian's config),
/// and `ss` needs them too. Everything else the tests use is built in.
const MODULES: &[&str] = &["inet_diag", "tcp_diag"];

pub struct Kernel {
    /// `uname -r` of the image, e.g. `6.1.0-41-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// Uncompressed `.ko` files and `order`, the file names in load order.
    pub modules: PathBuf,
}

/// The suite's kernel: from the cache, or resolved and downloaded (`refresh` forces that).
pub fn get(cache: &Path, suite: &str, refresh: bool) -> Result<Kernel> {
    let dir = cache.join("kernels").join(suite);
    if !refresh && let Some(kernel) = cached(&dir) {
        return Ok(kernel);
    }
    let mirror = Mirror::from_host_sources()?;
    eprintln!("vm-test: fetching the {suite} kernel ({METAPACKAGE}) from {}", mirror.uri);
    download(cache, suite, &mirror, &dir).with_context(|| {
        format!("getting the Debian {suite} kernel ({METAPACKAGE} from {})", mirror.uri)
    })
}

fn cached(dir: &Path) -> Option<Kernel> {
    // `release` is written last, so its presence means the files next to it are complete.
    let release = fs::read_to_string(dir.join("release")).ok()?.trim().to_owned();
    let kernel = Kernel { release, vmlinuz: dir.join("vmlinuz"), modules: dir.join("modules") };
    (kernel.vmlinuz.is_file()
        && kernel.modules.join("order").is_file()
        && !kernel.release.is_empty())
    .then_some(kernel)
}

fn download(cache: &Path, suite: &str, mirror: &Mirror, dir: &Path) -> Result<Kernel> {
    let apt = PrivateApt::new(&cache.join("apt").join(suite), suite, mirror)?;
    apt.run("apt-get", &["update"]).with_context(|| format!("apt-get update for suite {suite}"))?;
    let package =
        apt.image_package().with_context(|| format!("reading {METAPACKAGE} in suite {suite}"))?;

    let work = apt.root.join("download");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    apt.run_in(&work, "apt-get", &["download", &package])
        .with_context(|| format!("downloading {package} (suite {suite})"))?;
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| {
            format!("apt-get download {package} left no .deb in {}", work.display())
        })?;

    let unpack = work.join("unpack");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
    let release = kernel_release(&unpack)
        .with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))?;
    let _ = fs::remove_file(dir.join("release"));
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("modules"))
        .with_context(|| format!("creating {}", dir.display()))?;
    fs::rename(unpack.join(format!("boot/vmlinuz-{release}")), dir.join("vmlinuz"))
        .with_context(|| format!("moving the kernel into {}", dir.display()))?;
    // Debian moved /lib to /usr/lib: bullseye's package still uses the old place.
    let tree = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|base| unpack.join(base).join(&release))
        .find(|p| p.join("kernel").is_dir())
        .with_context(|| format!("no modules for {release} in {}", deb.display()))?;
    stage_modules(&tree, &dir.join("modules")).with_context(|| format!("modules of {package}"))?;
    fs::write(dir.join("release"), format!("{release}\n"))?;
    let _ = fs::remove_dir_all(&work);
    cached(dir).with_context(|| format!("kernel cache {} incomplete", dir.display()))
}

fn kernel_release(unpack: &Path) -> Option<String> {
    fs::read_dir(unpack.join("boot")).ok()?.filter_map(|e| e.ok()).find_map(|e| {
        e.file_name().to_str().and_then(|n| n.strip_prefix("vmlinuz-")).map(str::to_owned)
    })
}

/// Copies MODULES and what they depend on, decompressed so that busybox insmod loads them on
/// any kernel, as `NN-name.ko` listed in `order` in load order. The package has no modules.dep
/// (depmod writes it at install time): dependencies come from each module's `depends=` field.
fn stage_modules(tree: &Path, out: &Path) -> Result<()> {
    let mut index = Vec::new();
    index_modules(&tree.join("kernel"), &mut index)?;
    let mut order: Vec<String> = Vec::new();
    for wanted in MODULES {
        stage_module(wanted, &index, out, &mut order)?;
    }
    let names: String = order.iter().map(|n| format!("{n}\n")).collect();
    fs::write(out.join("order"), names).context("writing the module order")
}

fn stage_module(
    name: &str,
    index: &[(String, PathBuf)],
    out: &Path,
    order: &mut Vec<String>,
) -> Result<()> {
    if order
        .iter()
        .any(|staged| staged.split_once('-').is_some_and(|(_, n)| n == format!("{name}.ko")))
    {
        return Ok(());
    }
    // Not shipped as a module: built into this kernel, nothing to load.
    let Some((_, path)) = index.iter().find(|(n, _)| n == name) else { return Ok(()) };
    let staged = out.join(format!("{name}.ko.tmp"));
    decompress(path, &staged)?;
    let bytes = fs::read(&staged).with_context(|| format!("reading {}", staged.display()))?;
    for dep in module_depends(&bytes) {
        stage_module(&dep, index, out, order)?;
    }
    let file = format!("{:02}-{name}.ko", order.len() + 1);
    fs::rename(&staged, out.join(&file)).with_context(|| format!("naming {file}"))?;
    order.push(file);
    Ok(())
}

/// Module name (as the kernel spells it, `-` as `_`) and path of every `.ko*` under `dir`.
fn index_modules(dir: &Path, index: &mut Vec<(String, PathBuf)>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(file) = path.file_name().and_then(|n| n.to_str())
            && let Some((stem, _)) = file.split_once(".ko")
        {
            index.push((stem.replace('-', "_"), path.clone()));
        }
    }
    Ok(())
}

/// The `depends=a,b` entry of a module's .modinfo section (NUL-separated `key=value` strings).
fn module_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else { return Vec::new() };
    let value = &ko[at + KEY.len()..];
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

fn decompress(from: &Path, to: &Path) -> Result<()> {
    let tool = match from.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => {
            fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
            return Ok(());
        }
    };
    let file = fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let status = Command::new(tool)
        .arg("-dc")
        .arg(from)
        .stdout(file)
        .status()
        .with_context(|| format!("running {tool} (to decompress {})", from.display()))?;
    anyhow::ensure!(status.success(), "{tool} -dc {} failed ({status})", from.display());
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// apt-get/apt-cache with their own state, cache and source list under `root`. The host's apt.conf
/// (proxies) still applies; its sources and pinning do not.
struct PrivateApt {
    root: PathBuf,
    options: Vec<String>,
}

impl PrivateApt {
    fn new(root: &Path, suite: &str, mirror: &Mirror) -> Result<Self> {
        for sub in ["state/lists/partial", "cache/archives/partial", "empty"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        let keyring = mirror
            .keyring
            .clone()
            .or_else(|| Path::new(DEFAULT_KEYRING).exists().then(|| DEFAULT_KEYRING.into()));
        let signed_by = keyring.map(|k| format!(" signed-by={k}")).unwrap_or_default();
        let sources = root.join("sources.list");
        fs::write(&sources, format!("deb [arch=amd64{signed_by}] {} {suite} main\n", mirror.uri))
            .with_context(|| format!("writing {}", sources.display()))?;
        let path = |p: &str| root.join(p).display().to_string();
        let mut options = vec![
            format!("Dir::State={}", path("state")),
            format!("Dir::Cache={}", path("cache")),
            format!("Dir::Etc::SourceList={}", sources.display()),
            format!("Dir::Etc::SourceParts={}", path("empty")),
            format!("Dir::Etc::Preferences={}", path("empty/preferences")),
            format!("Dir::Etc::PreferencesParts={}", path("empty")),
            "Debug::NoLocking=1".into(),
            "Acquire::Languages=none".into(),
            "APT::Architecture=amd64".into(),
        ];
        if super::is_root() {
            // The private dirs belong to root; apt's _apt download sandbox could not write them.
            options.push("APT::Sandbox::User=root".into());
        }
        Ok(Self { root: root.to_owned(), options })
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool);
        cmd.arg("-q");
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd.args(args);
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<String> {
        self.run_in(&self.root, tool, args)
    }

    /// Like setup::capture, but the error names only the tool and its arguments, not the
    /// dozen `-o` options.
    fn run_in(&self, dir: &Path, tool: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(tool, args)
            .current_dir(dir)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "`{tool} {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The versioned image the metapackage depends on, e.g. `linux-image-6.1.0-41-cloud-amd64`.
    fn image_package(&self) -> Result<String> {
        let show = self.run("apt-cache", &["show", METAPACKAGE])?;
        let depends = show
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .with_context(|| format!("{METAPACKAGE} has no Depends field"))?;
        depends
            .split([',', '|'])
            .map(|d| d.split_whitespace().next().unwrap_or_default())
            .find(|name| name.starts_with("linux-image-"))
            .map(str::to_owned)
            .with_context(|| {
                format!("{METAPACKAGE} depends on no linux-image-* package: {depends}")
            })
    }
}

/// The Debian archive the host's apt is configured with.
pub struct Mirror {
    pub uri: String,
    keyring: Option<String>,
}

impl Mirror {
    pub fn from_host_sources() -> Result<Self> {
        let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
        if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
            let mut parts: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
            parts.sort();
            files.extend(parts);
        }
        for file in files {
            // apt itself reads only these two extensions (other files are disabled copies).
            let ext = file.extension().and_then(|e| e.to_str());
            let Ok(text) = fs::read_to_string(&file) else { continue };
            let entries = match ext {
                Some("list") => one_line_entries(&text),
                Some("sources") => deb822_entries(&text),
                _ => continue,
            };
            if let Some(mirror) = entries.into_iter().find_map(Entry::debian_mirror) {
                return Ok(mirror);
            }
        }
        bail!(
            "no Debian archive in the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/): \
             vm-test needs a `deb` source with component main for a Debian suite ({}) to fetch the guest kernels from",
            DEBIAN_SUITES.join(", ")
        )
    }
}

#[derive(Default)]
struct Entry {
    types: Vec<String>,
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    signed_by: Option<String>,
    enabled: bool,
}

impl Entry {
    fn debian_mirror(self) -> Option<Mirror> {
        let usable = self.enabled
            && self.types.iter().any(|t| t == "deb")
            && self.components.iter().any(|c| c == "main")
            && self.suites.iter().any(|s| DEBIAN_SUITES.contains(&s.as_str()));
        let uri = self.uris.into_iter().next()?;
        // An inline key block cannot be passed on a one-line source: fall back to the keyring.
        let keyring = self.signed_by.filter(|k| k.starts_with('/'));
        usable.then(|| Mirror { uri: uri.trim_end_matches('/').to_owned(), keyring })
    }
}

/// `deb [opt=value ...] uri suite component...`
fn one_line_entries(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some((kind, rest)) = line.split_once(char::is_whitespace) else { continue };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(after) = rest.strip_prefix('[') {
            let Some((options, tail)) = after.split_once(']') else { continue };
            signed_by = options
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(str::to_owned);
            rest = tail;
        }
        let mut words = rest.split_whitespace().map(str::to_owned);
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else { continue };
        entries.push(Entry {
            types: vec![kind.to_owned()],
            uris: vec![uri],
            suites: vec![suite],
            components: words.collect(),
            signed_by,
            enabled: true,
        });
    }
    entries
}

/// deb822 paragraphs (`Types:`, `URIs:`, `Suites:`, `Components:`, `Signed-By:`, `Enabled:`).
fn deb822_entries(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut current = Entry { enabled: true, ..Entry::default() };
    let mut last_key = String::new();
    let mut seen_field = false;
    for line in text.lines().chain(std::iter::once("")) {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if seen_field {
                entries.push(std::mem::replace(
                    &mut current,
                    Entry { enabled: true, ..Entry::default() },
                ));
            }
            seen_field = false;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Continuation line: only multi-line Signed-By (an inline key) uses them here.
            if last_key == "signed-by" {
                current.signed_by = Some(String::from("inline key"));
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else { continue };
        let key = key.trim().to_ascii_lowercase();
        let words = || value.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        match key.as_str() {
            "types" => current.types = words(),
            "uris" => current.uris = words(),
            "suites" => current.suites = words(),
            "components" => current.components = words(),
            "signed-by" => current.signed_by = Some(value.trim().to_owned()),
            "enabled" => current.enabled = !value.trim().eq_ignore_ascii_case("no"),
            _ => {}
        }
        last_key = key;
        seen_field = true;
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_debian_archive_in_deb822_sources() {
        let text = "Types: deb\n# comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n\
                    Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let entries = deb822_entries(text);
        assert_eq!(entries.len(), 2);
        let mirror = entries.into_iter().find_map(Entry::debian_mirror).expect("mirror");
        assert_eq!(mirror.uri, "http://mirror.example/debian");
        assert_eq!(mirror.keyring.as_deref(), Some("/usr/share/keyrings/k.gpg"));
    }

    #[test]
    fn skips_security_and_third_party_one_line_sources() {
        let text = "deb http://other.example/apt cloud-sdk main\n\
                    deb http://mirror.example/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n";
        let mirror =
            one_line_entries(text).into_iter().find_map(Entry::debian_mirror).expect("mirror");
        assert_eq!(mirror.uri, "http://mirror.example/debian");
        assert_eq!(mirror.keyring.as_deref(), Some("/k.gpg"));
    }

    #[test]
    fn reads_a_modules_dependencies() {
        let modinfo = b"\x7fELF...\0license=GPL\0depends=inet_diag,nf-conntrack\0intree=Y\0";
        assert_eq!(
            module_depends(modinfo),
            vec!["inet_diag".to_owned(), "nf_conntrack".to_owned()]
        );
        assert!(module_depends(b"\0depends=\0vermagic=6.1").is_empty());
    }

    #[test]
    fn ignores_disabled_deb822_entries() {
        let text = "Enabled: no\nTypes: deb\nURIs: http://a.example/debian\nSuites: trixie\nComponents: main\n";
        assert!(deb822_entries(text).into_iter().find_map(Entry::debian_mirror).is_none());
    }
}
