//! Reading the JSON files users write (settings, declarative VMs): a key
//! written twice is an error, not a silent "last one wins".

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::error::ConfigError;

/// Parses `text`, refusing duplicate keys (all of them named, by JSON path).
pub fn parse(text: &str, origin: &str) -> anyhow::Result<Value> {
    let dups = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Checked { path: String::new(), dups: &dups }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| ConfigError::invalid(format!("{origin}: not valid JSON: {e}")))?;
    let dups = dups.into_inner();
    if !dups.is_empty() {
        return Err(ConfigError::invalid(format!(
            "{origin}: {} written twice (the second would silently replace the first): {}",
            if dups.len() == 1 { "a key is" } else { "keys are" },
            dups.join(", ")
        )));
    }
    Ok(value)
}

struct Checked<'a> {
    path: String,
    dups: &'a RefCell<Vec<String>>,
}

impl Checked<'_> {
    fn child(&self, seg: String) -> Self {
        let path = if self.path.is_empty() { seg } else { format!("{}.{seg}", self.path) };
        Checked { path, dups: self.dups }
    }
}

impl<'de> DeserializeSeed<'de> for Checked<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) =
            seq.next_element_seed(Checked { path: format!("{}[{}]", self.path, out.len()), dups: self.dups })?
        {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let child = self.child(k.clone());
            let path = child.path.clone();
            let v = map.next_value_seed(child)?;
            if out.insert(k, v).is_some() {
                self.dups.borrow_mut().push(path);
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_named_by_path() {
        let e = parse(r#"{"pool":"a","vms":{"x":{"memory":"1G","memory":"2G"}},"pool":"b"}"#, "f.json").unwrap_err();
        assert!(matches!(e.downcast_ref::<ConfigError>(), Some(ConfigError::Invalid(_))), "{e:?}");
        assert_eq!(crate::exit::code(&e), 2);
        let msg = e.to_string();
        assert!(msg.contains("vms.x.memory") && msg.contains("pool") && msg.contains("f.json"), "{msg}");
        let v = parse(r#"{"a":[1,{"b":null}],"c":1.5,"d":true}"#, "ok").unwrap();
        assert_eq!(v, serde_json::json!({"a":[1,{"b":null}],"c":1.5,"d":true}));
        assert!(parse("{} x", "t").unwrap_err().to_string().contains("not valid JSON"));
    }
}
