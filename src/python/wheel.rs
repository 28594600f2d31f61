//! Wheel file names (PEP 427) and which of several wheels suits a target best.
//!
//! The resolver decides *which version*; when it offers several wheels of that version (uv's
//! pylock lists every one that fits), the most specific wheel for the target wins, as pip
//! would pick it: a platform wheel over `any`, the interpreter's own ABI over `abi3` over
//! `none`, the newest manylinux/macOS release the target runs.

use crate::python::error::{Error, Result};

/// The parts of `NAME-VERSION(-BUILD)?-PY-ABI-PLATFORM.whl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WheelName {
    pub name: String,
    pub version: String,
    pub python: Vec<String>,
    pub abi: Vec<String>,
    pub platform: Vec<String>,
}

impl WheelName {
    pub fn parse(file: &str) -> Option<WheelName> {
        let stem = file.strip_suffix(".whl")?;
        let parts: Vec<&str> = stem.split('-').collect();
        if !(5..=6).contains(&parts.len()) {
            return None;
        }
        let n = parts.len();
        let set = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        Some(WheelName {
            name: parts[0].to_string(),
            version: parts[1].to_string(),
            python: set(parts[n - 3]),
            abi: set(parts[n - 2]),
            platform: set(parts[n - 1]),
        })
    }
}

/// The file name at the end of a URL, percent-decoded (`torch-2.5.1%2Bcu124-…whl` →
/// `torch-2.5.1+cu124-…whl`); `None` unless it is a wheel.
pub fn file_name_of_url(url: &str) -> Option<String> {
    let path = url.split(['#', '?']).next()?;
    let last = path.rsplit('/').next()?;
    let name = percent_encoding::percent_decode_str(last)
        .decode_utf8()
        .ok()?
        .into_owned();
    name.ends_with(".whl").then_some(name)
}

/// How well a wheel fits: compared field by field, higher is better.
pub type Score = (u32, u32, u32, u32);

/// What a target interpreter and platform accept.
#[derive(Clone, Debug)]
pub struct Tags {
    /// e.g. `cp311`.
    abi: String,
    /// (major, minor) of the interpreter.
    version: (u32, u32),
    /// `linux`, `macosx`, `win`, or the raw tag.
    os: String,
    arch: String,
    /// glibc (manylinux) or macOS release the target has, as (major, minor).
    release: Option<(u32, u32)>,
    /// The target's platform tag as given.
    platform: String,
}

impl Tags {
    /// `abi` like `cp311`; `platform` a wheel platform tag (`linux_x86_64`,
    /// `manylinux_2_28_x86_64`, `macosx_14_0_arm64`, `win_amd64`); `libc` like `glibc 2.36`.
    pub fn new(abi: &str, platform: &str, libc: Option<&str>) -> Tags {
        let digits: String = abi.chars().filter(|c| c.is_ascii_digit()).collect();
        let version = if digits.len() >= 2 {
            (
                digits[..1].parse().unwrap_or(3),
                digits[1..].parse().unwrap_or(0),
            )
        } else {
            (3, 0)
        };
        let (os, release, arch) = split_platform(platform);
        let release = release.or_else(|| {
            libc.and_then(|l| l.strip_prefix("glibc "))
                .and_then(parse_release)
        });
        Tags {
            abi: abi.to_string(),
            version,
            os,
            arch,
            release,
            platform: platform.to_string(),
        }
    }

    /// `None` when the wheel does not run on the target.
    pub fn score(&self, w: &WheelName) -> Option<Score> {
        let py = w.python.iter().filter_map(|t| self.python_score(t)).max()?;
        let abi = w.abi.iter().filter_map(|t| self.abi_score(t)).max()?;
        let plat = w
            .platform
            .iter()
            .filter_map(|t| self.platform_score(t))
            .max()?;
        Some((plat.0, abi, plat.1, py))
    }

    fn python_score(&self, tag: &str) -> Option<u32> {
        let (major, minor) = self.version;
        let cp = format!("cp{major}{minor}");
        if tag == cp {
            return Some(3);
        }
        if tag == format!("py{major}{minor}") {
            return Some(2);
        }
        if tag == format!("py{major}") || tag == format!("cp{major}") {
            return Some(1);
        }
        // cp38 abi3 wheels run on later CPythons.
        let older_cp = tag
            .strip_prefix(&format!("cp{major}"))
            .and_then(|m| m.parse::<u32>().ok())
            .is_some_and(|m| m <= minor);
        let older_py = tag
            .strip_prefix(&format!("py{major}"))
            .and_then(|m| m.parse::<u32>().ok())
            .is_some_and(|m| m <= minor);
        (older_cp || older_py).then_some(0)
    }

    fn abi_score(&self, tag: &str) -> Option<u32> {
        match tag {
            t if t == self.abi => Some(2),
            "abi3" if self.abi.starts_with("cp") && !self.abi.ends_with('t') => Some(1),
            "none" => Some(0),
            _ => None,
        }
    }

    /// (specificity, release): `any` is 0; a platform wheel 1, with its release to rank
    /// manylinux_2_28 over manylinux_2_17.
    fn platform_score(&self, tag: &str) -> Option<(u32, u32)> {
        if tag == "any" {
            return Some((0, 0));
        }
        if tag == self.platform {
            return Some((2, 0));
        }
        let (os, release, arch) = split_platform(tag);
        let arch_ok = arch == self.arch
            || (os == "macosx"
                && (arch == "universal2" || arch == "universal")
                && (self.arch == "arm64" || self.arch == "x86_64"));
        if !arch_ok {
            return None;
        }
        let rank = |r: (u32, u32)| r.0 * 1000 + r.1;
        match (os.as_str(), self.os.as_str()) {
            ("manylinux", "linux") | ("manylinux", "manylinux") => {
                let r = release?;
                // Without a known glibc, assume the manylinux2014 baseline.
                let have = self.release.unwrap_or((2, 17));
                (r <= have).then(|| (1, rank(r)))
            }
            ("macosx", "macosx") => {
                let r = release?;
                self.release
                    .is_none_or(|have| r <= have)
                    .then(|| (1, rank(r)))
            }
            ("linux", "manylinux") => None,
            _ => None,
        }
    }
}

/// `manylinux_2_28_x86_64` → (`manylinux`, (2, 28), `x86_64`); legacy `manylinux2014_x86_64`
/// and `manylinux1_x86_64` too; `macosx_14_0_arm64` → (`macosx`, (14, 0), `arm64`);
/// `linux_x86_64` → (`linux`, None, `x86_64`).
fn split_platform(tag: &str) -> (String, Option<(u32, u32)>, String) {
    for (legacy, release) in [
        ("manylinux1_", (2, 5)),
        ("manylinux2010_", (2, 12)),
        ("manylinux2014_", (2, 17)),
    ] {
        if let Some(arch) = tag.strip_prefix(legacy) {
            return ("manylinux".into(), Some(release), arch.into());
        }
    }
    for os in ["manylinux", "musllinux", "macosx"] {
        if let Some(rest) = tag.strip_prefix(&format!("{os}_")) {
            let mut it = rest.splitn(3, '_');
            let (Some(a), Some(b), Some(arch)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                return (os.into(), Some((a, b)), arch.into());
            }
        }
    }
    match tag.split_once('_') {
        Some((os, arch)) => (os.into(), None, arch.into()),
        None => (tag.into(), None, String::new()),
    }
}

fn parse_release(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// uv's `--python-platform` for a target: `x86_64-manylinux_2_36`, `aarch64-apple-darwin`, …
pub fn uv_platform(t: &Tags) -> Result<String> {
    let arch = match t.arch.as_str() {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        a => a,
    };
    let r = t.release;
    Ok(match t.os.as_str() {
        "linux" | "manylinux" => match r {
            Some((maj, min)) => format!("{arch}-manylinux_{maj}_{min}"),
            None => format!("{arch}-unknown-linux-gnu"),
        },
        "musllinux" => format!("{arch}-unknown-linux-musl"),
        "macosx" => format!("{arch}-apple-darwin"),
        "win" => format!("{arch}-pc-windows-msvc"),
        _ => {
            return Err(Error::python(
                "platform",
                format!("{} is not a platform uv can resolve for", t.platform),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(f: &str) -> WheelName {
        WheelName::parse(f).unwrap()
    }

    #[test]
    fn parse_names() {
        let n = w("torch-2.5.1+cu124-cp311-cp311-linux_x86_64.whl");
        assert_eq!(
            (n.name.as_str(), n.version.as_str()),
            ("torch", "2.5.1+cu124")
        );
        assert!(WheelName::parse("x-1.tar.gz").is_none());
        assert_eq!(
            file_name_of_url(
                "https://h/torch-2.5.1%2Bcu124-cp311-cp311-linux_x86_64.whl#sha256=ab"
            )
            .as_deref(),
            Some("torch-2.5.1+cu124-cp311-cp311-linux_x86_64.whl")
        );
    }

    #[test]
    fn picks_the_most_specific_wheel() {
        let t = Tags::new("cp311", "linux_x86_64", Some("glibc 2.36"));
        let a = t.score(&w(
            "p-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        ));
        let b = t.score(&w("p-1-cp311-cp311-manylinux_2_28_x86_64.whl"));
        let c = t.score(&w("p-1-py3-none-any.whl"));
        let d = t.score(&w("p-1-cp38-abi3-manylinux_2_17_x86_64.whl"));
        assert!(b > a && a > d && d > c, "{a:?} {b:?} {c:?} {d:?}");
        assert!(t
            .score(&w("p-1-cp311-cp311-manylinux_2_39_x86_64.whl"))
            .is_none());
        assert!(t
            .score(&w("p-1-cp312-cp312-manylinux_2_17_x86_64.whl"))
            .is_none());
        assert!(t
            .score(&w("p-1-cp311-cp311-macosx_11_0_arm64.whl"))
            .is_none());
        assert_eq!(uv_platform(&t).unwrap(), "x86_64-manylinux_2_36");
        let m = Tags::new("cp311", "macosx_14_0_arm64", None);
        assert!(m
            .score(&w("p-1-cp311-cp311-macosx_11_0_universal2.whl"))
            .is_some());
        assert_eq!(uv_platform(&m).unwrap(), "aarch64-apple-darwin");
    }
}
