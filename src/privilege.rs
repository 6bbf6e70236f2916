//! Dropping root: `--user` and `--group`, applied once the listeners are bound and before any
//! connection is accepted, so forkd can bind port 7 without serving as root.

use nix::unistd::{Gid, Group, Uid, User, setgid, setgroups, setuid};

/// The identity to serve as.
#[derive(Clone, Debug)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub user: Option<String>,
    pub group: String,
}

/// Looks the names up (before binding, so a typo fails early). `None` when neither flag is set.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, String> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let found_user = user
        .map(|name| match User::from_name(name) {
            Ok(Some(u)) => Ok(u),
            Ok(None) => Err(format!("--user {name}: no such user")),
            Err(e) => Err(format!("--user {name}: {e}")),
        })
        .transpose()?;
    let found_group = match group {
        Some(name) => match Group::from_name(name) {
            Ok(Some(g)) => Some(g),
            Ok(None) => return Err(format!("--group {name}: no such group")),
            Err(e) => return Err(format!("--group {name}: {e}")),
        },
        None => None,
    };
    let (gid, group_name) = match (&found_group, &found_user) {
        (Some(g), _) => (g.gid, g.name.clone()),
        (None, Some(u)) => {
            let name = Group::from_gid(u.gid)
                .ok()
                .flatten()
                .map(|g| g.name)
                .unwrap_or_else(|| u.gid.to_string());
            (u.gid, name)
        }
        (None, None) => unreachable!("one of the flags is set"),
    };
    Ok(Some(Identity {
        uid: found_user
            .as_ref()
            .map(|u| u.uid)
            .unwrap_or_else(Uid::current),
        gid,
        user: found_user.map(|u| u.name),
        group: group_name,
    }))
}

/// Becomes `id`: no supplementary groups, then the group, then the user (in that order: once
/// the user is not root, the group can no longer change). Checks root cannot be regained.
pub fn drop_to(id: &Identity) -> Result<(), String> {
    let what = match &id.user {
        Some(user) => format!("user {user} group {}", id.group),
        None => format!("group {}", id.group),
    };
    let fail = |step: &str, e: nix::Error| format!("cannot drop to {what}: {step}: {e}");
    setgroups(&[]).map_err(|e| fail("setgroups", e))?;
    setgid(id.gid).map_err(|e| fail("setgid", e))?;
    if id.user.is_some() {
        setuid(id.uid).map_err(|e| fail("setuid", e))?;
        if !id.uid.is_root() && setuid(Uid::from_raw(0)).is_ok() {
            return Err(format!("cannot drop to {what}: root could be regained"));
        }
    }
    Ok(())
}
