//! Tables only where a table belongs. serde's derived `Deserialize` for a struct takes a
//! sequence too, field by field in order: a scenario's `host = ["64GiB", "4GiB"]` was read
//! as a host of 64 GiB with a 4 GiB reserve. These read a struct from a table (a map) only,
//! so an array there is a wrong type at its key and line, like any other.
//!
//! Use with `#[serde(deserialize_with = "…")]` (and `default` for the optional ones).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use toml::Spanned;

/// A struct read from a table only.
pub fn table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(TableOnly(PhantomData))
}

/// An optional struct, read from a table only where present.
pub fn table_opt<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    table(d).map(Some)
}

/// A list of tables (`[[vm]]`), each read from a table only, with its place in the file.
pub fn spanned_tables<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<Spanned<T>>, D::Error> {
    let list = Vec::<Spanned<Table<T>>>::deserialize(d)?;
    Ok(list
        .into_iter()
        .map(|s| {
            let span = s.span();
            Spanned::new(span, s.into_inner().0)
        })
        .collect())
}

/// An optional list of tables, each read from a table only where present.
pub fn tables_opt<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    let list = Vec::<Table<T>>::deserialize(d)?;
    Ok(Some(list.into_iter().map(|t| t.0).collect()))
}

/// Tables by name (`[vm.NAME]`), each read from a table only.
pub fn tables_by_name<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<BTreeMap<String, T>, D::Error> {
    let map = BTreeMap::<String, Table<T>>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, t)| (k, t.0)).collect())
}

/// `T`, read from a table only.
struct Table<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        table(d).map(Table)
    }
}

struct TableOnly<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for TableOnly<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Host {
        memory: String,
        #[serde(default)]
        reserve: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(deserialize_with = "table")]
        host: Host,
        #[serde(default, deserialize_with = "table_opt")]
        extra: Option<Host>,
        #[serde(default, deserialize_with = "spanned_tables")]
        vm: Vec<Spanned<Host>>,
        #[serde(default, deserialize_with = "tables_opt")]
        phases: Option<Vec<Host>>,
        #[serde(default, deserialize_with = "tables_by_name")]
        named: BTreeMap<String, Host>,
    }

    #[test]
    fn tables_are_read_and_arrays_refused_at_their_line() {
        let ok: File = toml::from_str(
            "phases = [{ memory = \"1\" }]\n[host]\nmemory = \"64GiB\"\n[extra]\nmemory = \"2\"\n\
             [[vm]]\nmemory = \"3\"\n[named.a]\nmemory = \"4\"\n",
        )
        .expect("tables");
        assert_eq!(ok.host.memory, "64GiB");
        assert_eq!(ok.extra.map(|h| h.memory).as_deref(), Some("2"));
        assert_eq!(ok.vm[0].get_ref().memory, "3");
        assert!(ok.vm[0].span().start > 0, "the span is kept");
        assert_eq!(ok.phases.map(|p| p.len()), Some(1));
        assert_eq!(ok.named["a"].memory, "4");

        // Each of these an array in place of a table, which serde's derive reads field by
        // field (`[[extra]]` is a list of tables where one belongs).
        for (text, line) in [
            ("host = [\"64GiB\", \"4GiB\"]\n", 1),
            ("[host]\nmemory = \"1\"\n[[extra]]\nmemory = \"1\"\n", 3),
            ("extra = [\"2\"]\n[host]\nmemory = \"1\"\n", 1),
            ("vm = [[\"64GiB\"]]\n[host]\nmemory = \"1\"\n", 1),
            ("phases = [[\"1\"]]\n[host]\nmemory = \"1\"\n", 1),
            ("[host]\nmemory = \"1\"\n[named]\na = [\"1\"]\n", 4),
        ] {
            let e = toml::from_str::<File>(text).expect_err(text).to_string();
            assert!(e.contains(&format!("line {line}")), "{text}: {e}");
            assert!(e.contains("expected a table"), "{text}: {e}");
        }
        // A wrong type inside a table of a list keeps its own words and line.
        let text = "[host]\nmemory = \"1\"\n[[vm]]\nmemory = \"1\"\n[[vm]]\nmemory = []\n";
        let e = toml::from_str::<File>(text)
            .expect_err("an array for a string")
            .to_string();
        assert!(
            e.contains("line 6") && e.contains("expected a string"),
            "{e}"
        );
        // A wrong field inside a table keeps its own line.
        let e = toml::from_str::<File>("[host]\nmemory = \"1\"\nmemroy = 2\n")
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("line 3") && e.contains("memroy"), "{e}");
    }
}
