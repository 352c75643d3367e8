//! Consumer groups' committed offsets, per logical partition, in the
//! controller's store (one key per group).

use super::*;

impl Controller {
    /// Every group's committed offsets: group → (topic, partition) → offset.
    pub(super) async fn all_offsets(
        &self,
    ) -> Result<BTreeMap<String, HashMap<(String, i32), i64>>, ControllerError> {
        let prefix = self.key("offsets");
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .inner
                .store
                .children(&prefix, after.as_deref(), 1000)
                .await?;
            for g in &page.names {
                let offsets = self.offsets(g).await?;
                let by = offsets
                    .into_iter()
                    .map(|o| ((o.topic, o.partition), o.offset))
                    .collect();
                out.insert(g.clone(), by);
            }
            match (page.more, page.names.last()) {
                (true, Some(last)) => after = Some(last.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// A group's committed offsets.
    pub async fn offsets(&self, group: &str) -> Result<Vec<OffsetEntry>, ControllerError> {
        check_group(group)?;
        let stored = self
            .inner
            .store
            .get(&self.key(&format!("offsets/{group}")))
            .await?;
        Ok(match stored {
            Some(s) => serde_json::from_slice(&s.value)
                .map_err(|e| ControllerError::Invalid(format!("stored offsets of {group}: {e}")))?,
            None => Vec::new(),
        })
    }

    /// Commits offsets for a group (merged into what it had).
    pub async fn commit(
        &self,
        group: &str,
        commits: Vec<OffsetEntry>,
    ) -> Result<(), ControllerError> {
        check_group(group)?;
        if commits.len() > 100_000 {
            return Err(ControllerError::Invalid(
                "too many offsets in one commit".into(),
            ));
        }
        let key = self.key(&format!("offsets/{group}"));
        loop {
            let stored = self.inner.store.get(&key).await?;
            let (mut all, expect): (Vec<OffsetEntry>, Expect) = match &stored {
                Some(s) => (
                    serde_json::from_slice(&s.value).unwrap_or_default(),
                    Expect::Version(s.version),
                ),
                None => (Vec::new(), Expect::Absent),
            };
            for c in &commits {
                match all
                    .iter_mut()
                    .find(|o| o.topic == c.topic && o.partition == c.partition)
                {
                    Some(o) => *o = c.clone(),
                    None => all.push(c.clone()),
                }
            }
            let value =
                serde_json::to_vec(&all).map_err(|e| ControllerError::Invalid(e.to_string()))?;
            match self
                .inner
                .store
                .put(&key, Bytes::from(value), expect, None)
                .await
            {
                Ok(_) => return Ok(()),
                // Another commit of the same group came between: again.
                Err(kilonova_metadata::MetadataError::BadVersion { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Deletes a group's offsets; whether it had any.
    pub async fn delete_offsets(&self, group: &str) -> Result<bool, ControllerError> {
        check_group(group)?;
        Ok(self
            .inner
            .store
            .delete(&self.key(&format!("offsets/{group}")), Expect::Any)
            .await?)
    }
}

fn check_group(group: &str) -> Result<(), ControllerError> {
    if group.is_empty() || group.len() > 249 || group.contains('/') || group.contains('\0') {
        return Err(ControllerError::Invalid(format!(
            "invalid group id {group:?}: 1 to 249 characters, no '/'"
        )));
    }
    Ok(())
}
