//! `slate policy sign` and `slate trust sign`: the offline release keys'
//! signatures that are not snapshot signatures (`docs/format/trust.md`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use slate_core::trust::{parse_signatures, sign_policy, TrustDoc};

use super::{read_public_key, read_secret_key};

/// `slate policy sign --key KEY POLICY`: append a release-key signature of
/// POLICY's exact bytes to POLICY.sig (kept once per key).
pub fn policy_sign(key: &Path, policy: &Path) -> Result<ExitCode> {
    let key = read_secret_key(key)?;
    let text = std::fs::read(policy).with_context(|| format!("cannot read {}", policy.display()))?;
    let policy_text = std::str::from_utf8(&text).with_context(|| format!("{} is not UTF-8", policy.display()))?;
    slate_state::Policy::parse(policy_text, policy)
        .with_context(|| format!("{} is not a valid state policy; not signing it", policy.display()))?;
    let sig_path = PathBuf::from(format!("{}.sig", policy.display()));
    let old = match std::fs::read_to_string(&sig_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => bail!("cannot read {}: {e}", sig_path.display()),
    };
    let sig = sign_policy(&text, &key);
    // Signatures of an older version of the policy are dropped: they no
    // longer verify, and a file full of them would hide the one that does.
    let mut kept: Vec<String> = parse_signatures(&old)
        .with_context(|| format!("{} is not a signature file", sig_path.display()))?
        .into_iter()
        .filter(|s| s.key != sig.key && s.key.verify(slate_core::trust::POLICY_DOMAIN, &text, &s.sig).is_ok())
        .map(|s| s.to_line())
        .collect();
    kept.push(sig.to_line());
    let mut out = kept.join("\n");
    out.push('\n');
    let tmp = sig_path.with_extension("sig.tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(out.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &sig_path).with_context(|| format!("cannot write {}", sig_path.display()))?;
    eprintln!(
        "signed {} with release key {}; {} now holds {} signature(s)",
        policy.display(),
        key.public().fingerprint(),
        sig_path.display(),
        kept.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// What `slate trust sign` is told.
pub struct TrustSign<'a> {
    pub repo: &'a Path,
    pub version: u64,
    pub expires_days: u64,
    pub threshold: u32,
    pub snapshot_threshold: u32,
    pub release: &'a [PathBuf],
    pub fleet: &'a [PathBuf],
    pub keys: &'a [PathBuf],
}

/// `slate trust sign`: write REPO/trust.
pub fn trust_sign(o: &TrustSign) -> Result<ExitCode> {
    super::open(o.repo)?;
    let release = o
        .release
        .iter()
        .map(|p| read_public_key(p))
        .collect::<Result<Vec<_>>>()?;
    let fleet = o.fleet.iter().map(|p| read_public_key(p)).collect::<Result<Vec<_>>>()?;
    let keys = o.keys.iter().map(|p| read_secret_key(p)).collect::<Result<Vec<_>>>()?;
    if o.threshold == 0 || o.threshold as usize > release.len() {
        bail!(
            "--threshold {} must be between 1 and the number of --release keys ({})",
            o.threshold,
            release.len()
        );
    }
    if o.snapshot_threshold == 0 || o.snapshot_threshold as usize > release.len() {
        bail!(
            "--snapshot-threshold {} must be between 1 and the number of --release keys ({})",
            o.snapshot_threshold,
            release.len()
        );
    }
    let path = o.repo.join("trust");
    if let Ok(old) = std::fs::read_to_string(&path) {
        if let Ok((doc, _)) = TrustDoc::parse(&old) {
            if o.version <= doc.version {
                bail!(
                    "{} holds version {}; give --version {} or higher",
                    path.display(),
                    doc.version,
                    doc.version + 1
                );
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let doc = TrustDoc {
        version: o.version,
        expires: now + o.expires_days.max(1) * 86400,
        threshold: o.threshold,
        snapshots: o.snapshot_threshold,
        release,
        fleet,
    };
    let own = keys.iter().filter(|k| doc.release.contains(&k.public())).count();
    if own < o.threshold as usize {
        bail!(
            "the document must be signed by {} of its own release keys; --key gives {own}",
            o.threshold
        );
    }
    let text = doc.to_text(&keys.iter().collect::<Vec<_>>());
    let tmp = o.repo.join("trust.tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "wrote trust document version {} ({} release, {} fleet keys, threshold {}, {} signature(s) per snapshot) to {}",
        doc.version,
        doc.release.len(),
        doc.fleet.len(),
        doc.threshold,
        doc.snapshots,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
