//! Avro schema definitions (Avro and Pulsar's JSON schemas) as far as
//! compatibility needs them: parsing a definition into a graph of types, and
//! the Avro specification's schema resolution ("can a reader with schema R
//! read data written with schema W?", spec section "Schema Resolution").
//!
//! Logical types resolve as their underlying type; documentation, `order` and
//! other attributes play no part. Named types may refer to themselves, so a
//! schema is a graph: nodes in a vector, names resolved to indices. Why our
//! own and not a crate's: docs/adr/0011-schema-compatibility-by-our-own-avro-resolution.md.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

/// Most nodes a definition may have (a definition of a few MiB has far
/// fewer): parsing stops past it rather than grow without bound.
const MAX_NODES: usize = 100_000;
/// Deepest nesting of fields, array items and map values a resolution follows.
const MAX_DEPTH: usize = 256;
/// Most steps one resolution takes (unions of records can multiply them).
const MAX_STEPS: u64 = 1_000_000;

/// A parsed definition: `nodes[root]` is its top-level type.
#[derive(Clone, Debug)]
pub struct AvroSchema {
    nodes: Vec<Node>,
    root: usize,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Record {
        name: Name,
        fields: Vec<Field>,
    },
    Enum {
        name: Name,
        symbols: Vec<String>,
        default: Option<String>,
    },
    Fixed {
        name: Name,
        size: u64,
    },
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    /// A named type referred to before its definition was complete (a
    /// recursive reference): resolved to the node of that name.
    Ref(usize),
}

#[derive(Clone, Debug, PartialEq)]
struct Name {
    /// Unqualified: resolution matches records, enums and fixed by it.
    simple: String,
    aliases: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
struct Field {
    name: String,
    aliases: Vec<String>,
    node: usize,
    has_default: bool,
}

/// Why a definition is not a valid Avro schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Avro schema definition: {0}")]
pub struct InvalidSchema(pub String);

fn invalid(why: impl Into<String>) -> InvalidSchema {
    InvalidSchema(why.into())
}

impl AvroSchema {
    /// Parses a definition (JSON text).
    pub fn parse(definition: &[u8]) -> Result<AvroSchema, InvalidSchema> {
        let json: Value =
            serde_json::from_slice(definition).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let mut parser = Parser {
            nodes: Vec::new(),
            names: BTreeMap::new(),
        };
        let root = parser.parse(&json, "")?;
        Ok(AvroSchema {
            nodes: parser.nodes,
            root,
        })
    }

    /// Whether a reader with schema `self` can read everything written with
    /// `writer`; `Err` says the first thing it could not resolve.
    pub fn can_read(&self, writer: &AvroSchema) -> Result<(), String> {
        let steps = Cell::new(0);
        let mut r = Resolver {
            reader: self,
            writer,
            assumed: HashSet::new(),
            steps: &steps,
        };
        r.check(self.root, writer.root, &mut Vec::new())
    }

    /// Follows references to the node a type stands for.
    fn node(&self, mut i: usize) -> &Node {
        // A chain of references is at most as long as the node list.
        for _ in 0..=self.nodes.len() {
            match self.nodes.get(i) {
                Some(Node::Ref(to)) => i = *to,
                Some(n) => return n,
                None => break,
            }
        }
        &Node::Null
    }

    fn resolve(&self, mut i: usize) -> usize {
        for _ in 0..=self.nodes.len() {
            match self.nodes.get(i) {
                Some(Node::Ref(to)) => i = *to,
                _ => return i,
            }
        }
        i
    }
}

struct Parser {
    nodes: Vec<Node>,
    /// Full names of the named types defined so far.
    names: BTreeMap<String, usize>,
}

impl Parser {
    fn push(&mut self, node: Node) -> Result<usize, InvalidSchema> {
        if self.nodes.len() >= MAX_NODES {
            return Err(invalid(format!("more than {MAX_NODES} types")));
        }
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn parse(&mut self, json: &Value, namespace: &str) -> Result<usize, InvalidSchema> {
        match json {
            Value::String(name) => self.named_or_primitive(name, namespace),
            Value::Array(branches) => {
                let mut out = Vec::with_capacity(branches.len());
                for b in branches {
                    let i = self.parse(b, namespace)?;
                    if matches!(self.nodes.get(i), Some(Node::Union(_))) {
                        return Err(invalid("a union may not hold a union"));
                    }
                    out.push(i);
                }
                self.push(Node::Union(out))
            }
            Value::Object(obj) => self.complex(obj, namespace),
            other => Err(invalid(format!("{other} is not a type"))),
        }
    }

    fn named_or_primitive(&mut self, name: &str, namespace: &str) -> Result<usize, InvalidSchema> {
        let primitive = match name {
            "null" => Some(Node::Null),
            "boolean" => Some(Node::Boolean),
            "int" => Some(Node::Int),
            "long" => Some(Node::Long),
            "float" => Some(Node::Float),
            "double" => Some(Node::Double),
            "bytes" => Some(Node::Bytes),
            "string" => Some(Node::String),
            _ => None,
        };
        if let Some(p) = primitive {
            return self.push(p);
        }
        let full = full_name(name, namespace);
        let found = self
            .names
            .get(&full)
            .or_else(|| self.names.get(name))
            .copied();
        match found {
            Some(i) => self.push(Node::Ref(i)),
            None => Err(invalid(format!("unknown type {name:?}"))),
        }
    }

    fn complex(
        &mut self,
        obj: &Map<String, Value>,
        namespace: &str,
    ) -> Result<usize, InvalidSchema> {
        let Some(kind) = obj.get("type") else {
            return Err(invalid("an object without \"type\""));
        };
        let kind = match kind {
            Value::String(k) => k.as_str(),
            // {"type": {...}} or {"type": [...]}: the inner type, annotated.
            other => return self.parse(other, namespace),
        };
        match kind {
            "record" | "error" => self.record(obj, namespace),
            "enum" => self.enumeration(obj, namespace),
            "fixed" => {
                let (name, full, _) = self.name_of(obj, namespace)?;
                let size = obj
                    .get("size")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| invalid(format!("fixed {full} without a size")))?;
                let i = self.push(Node::Fixed { name, size })?;
                self.define(full, i)
            }
            "array" => {
                let items = obj
                    .get("items")
                    .ok_or_else(|| invalid("an array without \"items\""))?;
                let i = self.parse(items, namespace)?;
                self.push(Node::Array(i))
            }
            "map" => {
                let values = obj
                    .get("values")
                    .ok_or_else(|| invalid("a map without \"values\""))?;
                let i = self.parse(values, namespace)?;
                self.push(Node::Map(i))
            }
            // A primitive with attributes ({"type": "long", "logicalType": …}).
            other => self.named_or_primitive(other, namespace),
        }
    }

    /// A named type's name, its full name and the namespace its insides use.
    fn name_of(
        &self,
        obj: &Map<String, Value>,
        namespace: &str,
    ) -> Result<(Name, String, String), InvalidSchema> {
        let Some(name) = obj.get("name").and_then(Value::as_str) else {
            return Err(invalid("a named type without a \"name\""));
        };
        check_name(name)?;
        let ns = match obj.get("namespace").and_then(Value::as_str) {
            Some(ns) => ns.to_owned(),
            None => namespace.to_owned(),
        };
        let full = full_name(name, &ns);
        let inner_ns = match full.rsplit_once('.') {
            Some((ns, _)) => ns.to_owned(),
            None => String::new(),
        };
        let simple = full.rsplit('.').next().unwrap_or(name).to_owned();
        Ok((
            Name {
                simple,
                aliases: aliases(obj),
            },
            full,
            inner_ns,
        ))
    }

    fn define(&mut self, full: String, i: usize) -> Result<usize, InvalidSchema> {
        if self.names.insert(full.clone(), i).is_some() {
            return Err(invalid(format!("{full} is defined twice")));
        }
        Ok(i)
    }

    fn record(
        &mut self,
        obj: &Map<String, Value>,
        namespace: &str,
    ) -> Result<usize, InvalidSchema> {
        let (name, full, inner_ns) = self.name_of(obj, namespace)?;
        // Defined before its fields, so they may refer to it.
        let i = self.push(Node::Record {
            name,
            fields: Vec::new(),
        })?;
        self.define(full.clone(), i)?;
        let Some(list) = obj.get("fields").and_then(Value::as_array) else {
            return Err(invalid(format!("record {full} without a \"fields\" list")));
        };
        let mut fields = Vec::with_capacity(list.len());
        let mut seen = HashSet::new();
        for f in list {
            let Some(f) = f.as_object() else {
                return Err(invalid(format!("a field of {full} is not an object")));
            };
            let Some(fname) = f.get("name").and_then(Value::as_str) else {
                return Err(invalid(format!("a field of {full} without a \"name\"")));
            };
            check_name(fname)?;
            if !seen.insert(fname.to_owned()) {
                return Err(invalid(format!("{full} has two fields named {fname}")));
            }
            let Some(t) = f.get("type") else {
                return Err(invalid(format!("field {full}.{fname} without a \"type\"")));
            };
            let node = self.parse(t, &inner_ns)?;
            fields.push(Field {
                name: fname.to_owned(),
                aliases: aliases(f),
                node,
                has_default: f.contains_key("default"),
            });
        }
        if let Some(Node::Record { fields: slot, .. }) = self.nodes.get_mut(i) {
            *slot = fields;
        }
        Ok(i)
    }

    fn enumeration(
        &mut self,
        obj: &Map<String, Value>,
        namespace: &str,
    ) -> Result<usize, InvalidSchema> {
        let (name, full, _) = self.name_of(obj, namespace)?;
        let Some(list) = obj.get("symbols").and_then(Value::as_array) else {
            return Err(invalid(format!("enum {full} without a \"symbols\" list")));
        };
        let mut symbols = Vec::with_capacity(list.len());
        for s in list {
            let Some(s) = s.as_str() else {
                return Err(invalid(format!("a symbol of enum {full} is not a string")));
            };
            check_name(s)?;
            if symbols.iter().any(|x| x == s) {
                return Err(invalid(format!("enum {full} has symbol {s} twice")));
            }
            symbols.push(s.to_owned());
        }
        let default = obj
            .get("default")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let i = self.push(Node::Enum {
            name,
            symbols,
            default,
        })?;
        self.define(full, i)
    }
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

/// Names are `[A-Za-z_][A-Za-z0-9_]*`, dot-separated for full names.
fn check_name(name: &str) -> Result<(), InvalidSchema> {
    let ok = !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    match ok {
        true => Ok(()),
        false => Err(invalid(format!("{name:?} is not a valid Avro name"))),
    }
}

fn aliases(obj: &Map<String, Value>) -> Vec<String> {
    obj.get("aliases")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| s.rsplit('.').next().unwrap_or(s).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

struct Resolver<'a> {
    reader: &'a AvroSchema,
    writer: &'a AvroSchema,
    /// Pairs of named types being resolved: met again (recursion), they are
    /// assumed to resolve, as the spec's resolution of recursive types does.
    assumed: HashSet<(usize, usize)>,
    /// Steps taken so far, by this resolution and its trials.
    steps: &'a Cell<u64>,
}

impl Resolver<'_> {
    /// `path` names where in the schema a mismatch is, for the message.
    fn check(&mut self, r: usize, w: usize, path: &mut Vec<String>) -> Result<(), String> {
        self.steps.set(self.steps.get() + 1);
        if self.steps.get() > MAX_STEPS || path.len() > MAX_DEPTH {
            return Err("the schemas are too deeply nested or complex to compare".into());
        }
        let (r, w) = (self.reader.resolve(r), self.writer.resolve(w));
        let (rn, wn) = (self.reader.node(r), self.writer.node(w));
        let at = |path: &Vec<String>| match path.is_empty() {
            true => "the top level".to_owned(),
            false => path.join("."),
        };
        // A writer's union: each of its branches must be readable.
        if let Node::Union(ws) = wn {
            for b in ws.clone() {
                self.check(r, b, path)?;
            }
            return Ok(());
        }
        match (rn, wn) {
            (Node::Null, Node::Null)
            | (Node::Boolean, Node::Boolean)
            | (Node::Int, Node::Int)
            | (Node::Long, Node::Long | Node::Int)
            | (Node::Float, Node::Float | Node::Long | Node::Int)
            | (Node::Double, Node::Double | Node::Float | Node::Long | Node::Int)
            | (Node::Bytes, Node::Bytes | Node::String)
            | (Node::String, Node::String | Node::Bytes) => Ok(()),
            (Node::Array(ri), Node::Array(wi)) => {
                let (ri, wi) = (*ri, *wi);
                path.push("[]".into());
                self.check(ri, wi, path)?;
                path.pop();
                Ok(())
            }
            (Node::Map(rv), Node::Map(wv)) => {
                let (rv, wv) = (*rv, *wv);
                path.push("{}".into());
                self.check(rv, wv, path)?;
                path.pop();
                Ok(())
            }
            (
                Node::Fixed {
                    name: rname,
                    size: rs,
                },
                Node::Fixed {
                    name: wname,
                    size: ws,
                },
            ) => {
                if !same_name(rname, wname) {
                    return Err(format!(
                        "at {}: fixed {} cannot read fixed {}",
                        at(path),
                        rname.simple,
                        wname.simple
                    ));
                }
                if rs != ws {
                    return Err(format!(
                        "at {}: fixed {} has size {rs}, the writer's {ws}",
                        at(path),
                        rname.simple
                    ));
                }
                Ok(())
            }
            (
                Node::Enum {
                    name: rname,
                    symbols: rsyms,
                    default,
                },
                Node::Enum {
                    name: wname,
                    symbols: wsyms,
                    ..
                },
            ) => {
                if !same_name(rname, wname) {
                    return Err(format!(
                        "at {}: enum {} cannot read enum {}",
                        at(path),
                        rname.simple,
                        wname.simple
                    ));
                }
                if default.is_none() {
                    if let Some(s) = wsyms.iter().find(|s| !rsyms.contains(s)) {
                        return Err(format!(
                            "at {}: the writer's symbol {s} of enum {} is unknown to the reader, which has no default",
                            at(path),
                            rname.simple
                        ));
                    }
                }
                Ok(())
            }
            (
                Node::Record {
                    name: rname,
                    fields: rfields,
                },
                Node::Record {
                    name: wname,
                    fields: wfields,
                },
            ) => {
                if !same_name(rname, wname) {
                    return Err(format!(
                        "at {}: record {} cannot read record {}",
                        at(path),
                        rname.simple,
                        wname.simple
                    ));
                }
                if !self.assumed.insert((r, w)) {
                    return Ok(());
                }
                for rf in rfields {
                    let wf = wfields.iter().find(|wf| {
                        wf.name == rf.name
                            || rf.aliases.contains(&wf.name)
                            || wf.aliases.contains(&rf.name)
                    });
                    match wf {
                        Some(wf) => {
                            path.push(rf.name.clone());
                            self.check(rf.node, wf.node, path)?;
                            path.pop();
                        }
                        None if rf.has_default => {}
                        None => {
                            return Err(format!(
                                "at {}: the reader's field {} is not in the writer's record {} and has no default",
                                at(path),
                                rf.name,
                                wname.simple
                            ))
                        }
                    }
                }
                Ok(())
            }
            // A reader's union: some branch must read the writer's type.
            (Node::Union(rs), _) => {
                for b in rs.clone() {
                    let mut trial = Resolver {
                        reader: self.reader,
                        writer: self.writer,
                        assumed: self.assumed.clone(),
                        steps: self.steps,
                    };
                    if trial.check(b, w, &mut path.clone()).is_ok() {
                        self.assumed = trial.assumed;
                        return Ok(());
                    }
                }
                Err(format!(
                    "at {}: no branch of the reader's union reads the writer's {}",
                    at(path),
                    describe(wn)
                ))
            }
            _ => Err(format!(
                "at {}: the reader's {} cannot read the writer's {}",
                at(path),
                describe(rn),
                describe(wn)
            )),
        }
    }
}

fn same_name(reader: &Name, writer: &Name) -> bool {
    reader.simple == writer.simple || reader.aliases.contains(&writer.simple)
}

fn describe(n: &Node) -> String {
    match n {
        Node::Null => "null".into(),
        Node::Boolean => "boolean".into(),
        Node::Int => "int".into(),
        Node::Long => "long".into(),
        Node::Float => "float".into(),
        Node::Double => "double".into(),
        Node::Bytes => "bytes".into(),
        Node::String => "string".into(),
        Node::Record { name, .. } => format!("record {}", name.simple),
        Node::Enum { name, .. } => format!("enum {}", name.simple),
        Node::Fixed { name, .. } => format!("fixed {}", name.simple),
        Node::Array(_) => "array".into(),
        Node::Map(_) => "map".into(),
        Node::Union(_) => "union".into(),
        Node::Ref(_) => "named type".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> AvroSchema {
        AvroSchema::parse(s.as_bytes()).unwrap()
    }

    fn reads(reader: &str, writer: &str) -> bool {
        parse(reader).can_read(&parse(writer)).is_ok()
    }

    const V1: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"}]}"#;
    const ADD_WITH_DEFAULT: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"},{"name":"email","type":["null","string"],"default":null}]}"#;
    const ADD_WITHOUT_DEFAULT: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"},{"name":"email","type":"string"}]}"#;

    #[test]
    fn a_reader_reads_a_writer_without_its_defaulted_field() {
        assert!(reads(ADD_WITH_DEFAULT, V1));
        // The old reader ignores the writer's extra field.
        assert!(reads(V1, ADD_WITH_DEFAULT));
    }

    #[test]
    fn a_reader_field_without_default_missing_in_the_writer_is_unreadable() {
        let e = parse(ADD_WITHOUT_DEFAULT).can_read(&parse(V1)).unwrap_err();
        assert!(e.contains("email"), "{e}");
        assert!(reads(V1, ADD_WITHOUT_DEFAULT));
    }

    #[test]
    fn numbers_promote_upwards_only() {
        let rec = |t: &str| {
            format!(r#"{{"type":"record","name":"R","fields":[{{"name":"x","type":"{t}"}}]}}"#)
        };
        for (reader, writer) in [
            ("long", "int"),
            ("float", "int"),
            ("double", "long"),
            ("double", "float"),
            ("string", "bytes"),
            ("bytes", "string"),
        ] {
            assert!(reads(&rec(reader), &rec(writer)), "{reader} reads {writer}");
        }
        for (reader, writer) in [
            ("int", "long"),
            ("float", "double"),
            ("int", "string"),
            ("boolean", "int"),
        ] {
            assert!(
                !reads(&rec(reader), &rec(writer)),
                "{reader} reads {writer}"
            );
        }
    }

    #[test]
    fn records_of_another_name_do_not_resolve_unless_aliased() {
        let other = r#"{"type":"record","name":"Person","fields":[{"name":"id","type":"long"}]}"#;
        assert!(!reads(other, V1));
        let aliased = r#"{"type":"record","name":"Person","aliases":["User"],"fields":[{"name":"id","type":"long"}]}"#;
        assert!(reads(aliased, V1));
        // Namespaces do not matter, only the unqualified name.
        let namespaced = r#"{"type":"record","name":"User","namespace":"a.b","fields":[{"name":"id","type":"long"}]}"#;
        assert!(reads(namespaced, V1));
    }

    #[test]
    fn unions_resolve_branch_by_branch() {
        assert!(reads(r#"["null","string"]"#, r#""string""#));
        assert!(!reads(r#""string""#, r#"["null","string"]"#));
        assert!(reads(r#"["null","long"]"#, r#"["null","int"]"#));
        assert!(!reads(r#"["null","int"]"#, r#"["null","long"]"#));
    }

    #[test]
    fn enums_need_every_writer_symbol_or_a_default() {
        let e = |syms: &str, default: &str| {
            format!(r#"{{"type":"enum","name":"E","symbols":[{syms}]{default}}}"#)
        };
        assert!(reads(&e(r#""A","B","C""#, ""), &e(r#""A","B""#, "")));
        assert!(!reads(&e(r#""A","B""#, ""), &e(r#""A","B","C""#, "")));
        assert!(reads(
            &e(r#""A","B""#, r#","default":"A""#),
            &e(r#""A","B","C""#, "")
        ));
    }

    #[test]
    fn arrays_maps_and_fixed_resolve_their_insides() {
        assert!(reads(
            r#"{"type":"array","items":"long"}"#,
            r#"{"type":"array","items":"int"}"#
        ));
        assert!(!reads(
            r#"{"type":"map","values":"int"}"#,
            r#"{"type":"map","values":"long"}"#
        ));
        assert!(reads(
            r#"{"type":"fixed","name":"F","size":4}"#,
            r#"{"type":"fixed","name":"F","size":4}"#
        ));
        assert!(!reads(
            r#"{"type":"fixed","name":"F","size":4}"#,
            r#"{"type":"fixed","name":"F","size":8}"#
        ));
    }

    #[test]
    fn recursive_records_resolve() {
        let list = r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}"#;
        let list2 = r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"long"},{"name":"next","type":["null","Node"]}]}"#;
        assert!(reads(list, list));
        assert!(reads(list2, list));
        assert!(!reads(list, list2));
    }

    #[test]
    fn logical_types_resolve_as_their_underlying_type() {
        assert!(reads(
            r#"{"type":"long","logicalType":"timestamp-millis"}"#,
            r#""long""#
        ));
    }

    #[test]
    fn invalid_definitions_are_refused_with_a_reason() {
        for bad in [
            "not json",
            "42",
            r#""nosuchtype""#,
            r#"{"type":"record","name":"R"}"#,
            r#"{"type":"record","fields":[]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a"}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"a","type":"int"}]}"#,
            r#"{"type":"record","name":"1bad","fields":[]}"#,
            r#"{"type":"enum","name":"E","symbols":["A","A"]}"#,
            r#"{"type":"array"}"#,
            r#"[["null"],"int"]"#,
        ] {
            let e = AvroSchema::parse(bad.as_bytes()).unwrap_err();
            assert!(
                e.to_string().starts_with("invalid Avro schema"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_definition_with_too_many_types_is_refused() {
        let many = format!("[{}]", vec![r#""int""#; MAX_NODES + 1].join(","));
        assert!(AvroSchema::parse(many.as_bytes()).is_err());
    }
}
