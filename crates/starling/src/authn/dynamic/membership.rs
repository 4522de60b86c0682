//! Membership edits of the dynamic security document: giving a client or a group a role,
//! putting a client in a group, and taking them back. Adding a reference that is there
//! already changes its priority; taking one that is not there is a 404.

use super::DynsecError;
use super::model::{
    Document, GroupRef, MAX_GROUPS_PER_CLIENT, MAX_ROLES_PER_ENTRY, RoleRef, invalid, too_many,
};

impl Document {
    /// Gives a client a role (or changes its priority if it has it).
    pub fn add_client_role(&mut self, username: &str, role: RoleRef) -> Result<(), DynsecError> {
        self.require_role(&role.name)?;
        let c = self.client_mut(username)?;
        add_ref(
            &mut c.roles,
            role,
            |r| &r.name,
            "roles",
            MAX_ROLES_PER_ENTRY,
        )
    }

    /// Takes a role from a client; 404 if it does not have it.
    pub fn remove_client_role(&mut self, username: &str, role: &str) -> Result<(), DynsecError> {
        let c = self.client_mut(username)?;
        remove_ref(
            &mut c.roles,
            role,
            |r| &r.name,
            || format!("client {username:?} has no role {role:?}"),
        )
    }

    /// Puts a client in a group (or changes its priority if it is in it).
    pub fn add_client_group(&mut self, username: &str, group: GroupRef) -> Result<(), DynsecError> {
        if !self.groups.contains_key(&group.name) {
            return Err(invalid("name", format!("no group {:?}", group.name)));
        }
        let c = self.client_mut(username)?;
        add_ref(
            &mut c.groups,
            group,
            |g| &g.name,
            "groups",
            MAX_GROUPS_PER_CLIENT,
        )
    }

    /// Takes a client out of a group; 404 if it is not in it.
    pub fn remove_client_group(&mut self, username: &str, group: &str) -> Result<(), DynsecError> {
        let c = self.client_mut(username)?;
        remove_ref(
            &mut c.groups,
            group,
            |g| &g.name,
            || format!("client {username:?} is not in group {group:?}"),
        )
    }

    /// Gives a group a role (or changes its priority if it has it).
    pub fn add_group_role(&mut self, group: &str, role: RoleRef) -> Result<(), DynsecError> {
        self.require_role(&role.name)?;
        let g = self.group_mut(group)?;
        add_ref(
            &mut g.roles,
            role,
            |r| &r.name,
            "roles",
            MAX_ROLES_PER_ENTRY,
        )
    }

    /// Takes a role from a group; 404 if it does not have it.
    pub fn remove_group_role(&mut self, group: &str, role: &str) -> Result<(), DynsecError> {
        let g = self.group_mut(group)?;
        remove_ref(
            &mut g.roles,
            role,
            |r| &r.name,
            || format!("group {group:?} has no role {role:?}"),
        )
    }

    /// 400 naming `name` unless the role exists (a request's body names it).
    fn require_role(&self, name: &str) -> Result<(), DynsecError> {
        if self.roles.contains_key(name) {
            Ok(())
        } else {
            Err(invalid("name", format!("no role {name:?}")))
        }
    }
}

/// Adds `item` to a list of references, or replaces the one with its name (a new priority).
fn add_ref<T>(
    list: &mut Vec<T>,
    item: T,
    name: impl Fn(&T) -> &String,
    what: &str,
    max: usize,
) -> Result<(), DynsecError> {
    if let Some(slot) = list.iter_mut().find(|x| name(x) == name(&item)) {
        *slot = item;
        return Ok(());
    }
    if list.len() >= max {
        return Err(too_many(what, max));
    }
    list.push(item);
    Ok(())
}

fn remove_ref<T>(
    list: &mut Vec<T>,
    which: &str,
    name: impl Fn(&T) -> &String,
    missing: impl FnOnce() -> String,
) -> Result<(), DynsecError> {
    let before = list.len();
    list.retain(|x| name(x) != which);
    if list.len() == before {
        return Err(DynsecError::NotFound(missing()));
    }
    Ok(())
}
