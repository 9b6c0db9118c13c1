//! Profile switches flipped at run time (`loupectl profile set default allow_sha1=true
//! ciphers+=ECDHE-RSA-AES128-SHA`): parsed, applied on top of the configuration file's
//! profiles, and kept in the state directory so they survive a restart.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Profile, Undecryptable, Untrusted};

/// One `KEY=VALUE`, `KEY+=VALUE` or `KEY-=VALUE` (the last two on list keys only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileChange {
    pub key: ProfileKey,
    pub op: ChangeOp,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Set,
    Add,
    Remove,
}

/// The profile settings that can be changed live; `min`/`max` are short for the versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKey {
    MinVersion,
    MaxVersion,
    AllowSha1,
    LegacyServers,
    Untrusted,
    Expired,
    UnsupportedVersion,
    UnsupportedCipher,
    ClientAuth,
    Ciphers,
    Groups,
    Sigalgs,
}

const KEYS: &[(&str, ProfileKey)] = &[
    ("min", ProfileKey::MinVersion),
    ("min_version", ProfileKey::MinVersion),
    ("max", ProfileKey::MaxVersion),
    ("max_version", ProfileKey::MaxVersion),
    ("allow_sha1", ProfileKey::AllowSha1),
    ("legacy_servers", ProfileKey::LegacyServers),
    ("untrusted", ProfileKey::Untrusted),
    ("expired", ProfileKey::Expired),
    ("unsupported_version", ProfileKey::UnsupportedVersion),
    ("unsupported_cipher", ProfileKey::UnsupportedCipher),
    ("client_auth", ProfileKey::ClientAuth),
    ("ciphers", ProfileKey::Ciphers),
    ("groups", ProfileKey::Groups),
    ("sigalgs", ProfileKey::Sigalgs),
];

impl ProfileKey {
    fn is_list(self) -> bool {
        matches!(self, ProfileKey::Ciphers | ProfileKey::Groups | ProfileKey::Sigalgs)
    }
}

impl std::str::FromStr for ProfileChange {
    type Err = String;

    fn from_str(text: &str) -> Result<ProfileChange, String> {
        let (left, value) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected KEY=VALUE, KEY+=VALUE or KEY-=VALUE"))?;
        let (name, op) = if let Some(name) = left.strip_suffix('+') {
            (name, ChangeOp::Add)
        } else if let Some(name) = left.strip_suffix('-') {
            (name, ChangeOp::Remove)
        } else {
            (left, ChangeOp::Set)
        };
        let name = name.trim();
        let key = KEYS
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, key)| *key)
            .ok_or_else(|| {
                let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                format!("{text:?}: unknown profile key {name:?} (known: {})", known.join(", "))
            })?;
        if op != ChangeOp::Set && !key.is_list() {
            return Err(format!("{text:?}: {name} is not a list: use {name}=VALUE"));
        }
        Ok(ProfileChange {
            key,
            op,
            value: value.trim().to_string(),
        })
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got {value:?}")),
    }
}

fn parse_undecryptable(value: &str) -> Result<Undecryptable, String> {
    match value {
        "block" => Ok(Undecryptable::Block),
        "bypass" => Ok(Undecryptable::Bypass),
        _ => Err(format!("expected block or bypass, got {value:?}")),
    }
}

fn parse_untrusted(value: &str) -> Result<Untrusted, String> {
    match value {
        "block" => Ok(Untrusted::Block),
        "forward-untrust" => Ok(Untrusted::ForwardUntrust),
        _ => Err(format!("expected block or forward-untrust, got {value:?}")),
    }
}

fn parse_version(value: &str) -> Result<String, String> {
    let version = value.strip_prefix("TLSv").unwrap_or(value);
    Profile::wire_version(version)
        .map(|_| version.to_string())
        .ok_or_else(|| format!("expected 1.0, 1.1, 1.2 or 1.3, got {value:?}"))
}

/// `a,b` or `a:b` (OpenSSL's separator) into items.
fn list_items(value: &str) -> Vec<String> {
    value
        .split([',', ':'])
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

fn change_list(list: &mut Vec<String>, op: ChangeOp, value: &str) {
    let items = list_items(value);
    match op {
        ChangeOp::Set => *list = items,
        ChangeOp::Add => {
            for item in items {
                if !list.iter().any(|have| have.eq_ignore_ascii_case(&item)) {
                    list.push(item);
                }
            }
        }
        ChangeOp::Remove => list.retain(|have| !items.iter().any(|item| have.eq_ignore_ascii_case(item))),
    }
}

impl ProfileChange {
    /// Applies the change to `profile`; the profile must still pass its own checks.
    pub fn apply(&self, profile: &mut Profile) -> Result<(), String> {
        let value = self.value.as_str();
        match self.key {
            ProfileKey::MinVersion => profile.min_version = parse_version(value)?,
            ProfileKey::MaxVersion => profile.max_version = parse_version(value)?,
            ProfileKey::AllowSha1 => profile.allow_sha1 = parse_bool(value)?,
            ProfileKey::LegacyServers => profile.legacy_servers = parse_bool(value)?,
            ProfileKey::Untrusted => profile.untrusted = parse_untrusted(value)?,
            ProfileKey::Expired => profile.expired = Some(parse_untrusted(value)?),
            ProfileKey::UnsupportedVersion => profile.unsupported_version = parse_undecryptable(value)?,
            ProfileKey::UnsupportedCipher => profile.unsupported_cipher = parse_undecryptable(value)?,
            ProfileKey::ClientAuth => profile.client_auth = parse_undecryptable(value)?,
            ProfileKey::Ciphers => change_list(&mut profile.ciphers, self.op, value),
            ProfileKey::Groups => change_list(&mut profile.groups, self.op, value),
            ProfileKey::Sigalgs => change_list(&mut profile.sigalgs, self.op, value),
        }
        profile.check().map_err(|(key, message)| format!("{key}: {message}"))
    }
}

/// One change as persisted and shown by `policy show`: the profile and the text given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileOverride {
    pub profile: String,
    pub change: String,
}

/// The persisted changes, in the order they were made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileOverrides {
    pub changes: Vec<ProfileOverride>,
}

impl ProfileOverrides {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("profile-overrides.json")
    }

    /// The saved changes; none when the file does not exist.
    pub fn load(state_dir: &Path) -> Result<ProfileOverrides, String> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(|changes| ProfileOverrides { changes })
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProfileOverrides::default()),
            Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
        }
    }

    /// Writes the changes atomically (a temporary file renamed over the old one).
    pub fn save(&self, state_dir: &Path) -> Result<(), String> {
        let path = Self::path(state_dir);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.changes).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))
    }

    /// `config` with every change applied to its profiles (the built-in `default` is
    /// added to the list first when a change names it and the file does not define it).
    pub fn apply(&self, config: &Config) -> Result<Config, String> {
        let mut config = config.clone();
        for saved in &self.changes {
            let change: ProfileChange = saved.change.parse()?;
            apply_one(&mut config, &saved.profile, &change)?;
        }
        Ok(config)
    }
}

/// Applies one change to the named profile of `config`.
pub fn apply_one(config: &mut Config, profile: &str, change: &ProfileChange) -> Result<(), String> {
    if !config.profiles.iter().any(|p| p.name == profile) {
        if profile != "default" {
            return Err(format!(
                "unknown profile {profile:?} (known: {})",
                config.profile_names().join(", ")
            ));
        }
        config.profiles.insert(0, Profile::builtin_default());
    }
    let target = config
        .profiles
        .iter_mut()
        .find(|p| p.name == profile)
        .expect("the profile exists or was just added");
    change.apply(target).map_err(|e| format!("profile {profile:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(text: &str) -> ProfileChange {
        text.parse().unwrap()
    }

    #[test]
    fn changes_parse_and_apply() {
        let mut p = Profile::builtin_default();
        change("allow_sha1=true").apply(&mut p).unwrap();
        change("ciphers+=ECDHE-RSA-AES128-SHA").apply(&mut p).unwrap();
        change("ciphers+=ECDHE-RSA-AES128-SHA:AES128-SHA")
            .apply(&mut p)
            .unwrap();
        assert_eq!(p.ciphers, ["ECDHE-RSA-AES128-SHA", "AES128-SHA"]);
        change("min=1.0").apply(&mut p).unwrap();
        assert_eq!((p.allow_sha1, p.min_version.as_str()), (true, "1.0"));
        change("ciphers-=AES128-SHA").apply(&mut p).unwrap();
        assert_eq!(p.ciphers, ["ECDHE-RSA-AES128-SHA"]);
        change("client_auth=block").apply(&mut p).unwrap();
        assert_eq!(p.client_auth, Undecryptable::Block);
    }

    #[test]
    fn bad_changes_say_why() {
        let err = |text: &str| text.parse::<ProfileChange>().unwrap_err();
        assert!(err("allow_sha1").contains("expected KEY=VALUE"));
        assert!(err("colour=red").contains("unknown profile key \"colour\""));
        assert!(err("allow_sha1+=true").contains("not a list"));
        let mut p = Profile::builtin_default();
        assert_eq!(
            change("min=1.0").apply(&mut p).unwrap_err(),
            "min_version: TLS 1.0 needs SHA-1 suites: set allow_sha1 = true as well"
        );
        assert!(change("min=2").apply(&mut p).unwrap_err().contains("expected 1.0"));
        assert!(change("allow_sha1=maybe")
            .apply(&mut p)
            .unwrap_err()
            .contains("true or false"));
    }

    #[test]
    fn overrides_apply_to_the_named_profile() {
        let config = Config::parse("[[profile]]\nname = \"strict\"\n", Path::new("t.toml")).unwrap();
        let overrides = ProfileOverrides {
            changes: vec![ProfileOverride {
                profile: "default".into(),
                change: "allow_sha1=true".into(),
            }],
        };
        let applied = overrides.apply(&config).unwrap();
        assert!(applied.profile("default").unwrap().allow_sha1);
        assert!(!applied.profile("strict").unwrap().allow_sha1);
        let mut config = config;
        let err = apply_one(&mut config, "nope", &change("allow_sha1=true")).unwrap_err();
        assert_eq!(err, "unknown profile \"nope\" (known: default, strict)");
    }
}
