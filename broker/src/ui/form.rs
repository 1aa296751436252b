//! Query strings and `application/x-www-form-urlencoded` bodies as a small
//! map: the first value of each name wins, names and values are bounded.

use std::collections::HashMap;

/// Longest value kept; longer ones are cut (the APIs behind the forms
/// refuse oversized values with their own limits, far below this).
const MAX_VALUE: usize = 4096;
/// Most fields kept.
const MAX_FIELDS: usize = 32;

/// Decoded fields.
#[derive(Debug, Default, Clone)]
pub struct Fields(HashMap<String, String>);

impl Fields {
    /// Decodes `raw` (a query string or a form body).
    pub fn parse(raw: &[u8]) -> Self {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw) {
            if map.len() >= MAX_FIELDS {
                break;
            }
            let mut v = v.into_owned();
            if v.len() > MAX_VALUE {
                let mut end = MAX_VALUE;
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v.truncate(end);
            }
            map.entry(k.into_owned()).or_insert(v);
        }
        Self(map)
    }

    /// From an optional query string.
    pub fn query(raw: Option<String>) -> Self {
        raw.map(|q| Self::parse(q.as_bytes())).unwrap_or_default()
    }

    /// The trimmed value of `name`, `""` when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map(|v| v.trim()).unwrap_or("")
    }
}
