//! Routing-rule `match` expressions: the subset of CEL that Dapr's documentation uses.
//!
//! Supported: the variable `event` (the CloudEvent) with field access (`event.type`,
//! `event.data.order.size`, `event.data["a-b"]`, `event.data.items[0]`); string (`"x"` or
//! `'x'`), number, `true`/`false`/`null` literals; `==`, `!=`, `<`, `<=`, `>`, `>=`; `&&`, `||`,
//! `!`; parentheses; `x in [a, b]`; `has(event.data.x)`. Anything else (other functions, macros,
//! arithmetic, the ternary) is refused when the subscription is loaded, with the column and what
//! to write instead, so `edgecar check-config` reports it.
//!
//! Evaluation follows CEL: a missing field is an error ("no such key"), `&&`/`||` absorb an error
//! when the other side decides (`false && err` is `false`), numbers compare by value whatever
//! their JSON spelling, `==` between different types is `false`, ordering them is an error.

use std::fmt;

use serde_json::Value;

/// A parsed `match` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    source: String,
    node: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Value),
    /// A path below `event` (empty = the whole event).
    Path(Vec<Step>),
    Has(Vec<Step>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    In(Box<Node>, Vec<Node>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Why an expression could not be evaluated against an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Expr {
    /// Parses an expression, or says precisely what is not supported and where.
    pub fn parse(source: &str) -> Result<Expr, String> {
        let tokens = lex(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            nesting: 0,
        };
        let node = p.or()?;
        if let Some(t) = p.peek() {
            return Err(format!(
                "column {}: unexpected {} after a complete expression",
                t.col,
                t.kind.describe()
            ));
        }
        Ok(Expr {
            source: source.to_owned(),
            node,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the event matches; an error when CEL would raise one (missing field, a non-boolean
    /// result, ordering different types).
    pub fn matches(&self, event: &Value) -> Result<bool, EvalError> {
        match eval(&self.node, event)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError(format!(
                "the expression {:?} gave {other} instead of true or false",
                self.source
            ))),
        }
    }
}

// ---- lexing ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Op(&'static str),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Op(o) => format!("`{o}`"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    kind: Tok,
    col: usize,
}

const OPS: &[&str] = &[
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ",", ".", "+", "-", "*",
    "/", "%", "?", ":", "{", "}", "=",
];

fn lex(src: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                kind: Tok::Ident(chars[start..i].iter().collect()),
                col,
            });
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && matches!(chars[i], 'e' | 'E') {
                i += 1;
                if i < chars.len() && matches!(chars[i], '+' | '-') {
                    i += 1;
                }
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            // CEL's unsigned suffix.
            if i < chars.len() && matches!(chars[i], 'u' | 'U') {
                i += 1;
            }
            let text: String = chars[start..i]
                .iter()
                .filter(|c| !matches!(c, 'u' | 'U'))
                .collect();
            let n = text
                .parse::<f64>()
                .map_err(|_| format!("column {col}: {text:?} is not a number"))?;
            out.push(Token {
                kind: Tok::Num(n),
                col,
            });
        } else if c == '"' || c == '\'' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&ch) = chars.get(i) else {
                    return Err(format!("column {col}: string is not closed"));
                };
                i += 1;
                if ch == quote {
                    break;
                }
                if ch == '\\' {
                    let Some(&esc) = chars.get(i) else {
                        return Err(format!("column {col}: string is not closed"));
                    };
                    i += 1;
                    s.push(match esc {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '\\' | '"' | '\'' => esc,
                        other => {
                            return Err(format!(
                                "column {}: escape \\{other} is not supported",
                                i - 1
                            ));
                        }
                    });
                } else {
                    s.push(ch);
                }
            }
            out.push(Token {
                kind: Tok::Str(s),
                col,
            });
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let op = OPS
                .iter()
                .find(|op| rest.starts_with(**op))
                .ok_or_else(|| format!("column {col}: unexpected character {c:?}"))?;
            i += op.chars().count();
            out.push(Token {
                kind: Tok::Op(op),
                col,
            });
        }
    }
    Ok(out)
}

// ---- parsing ----

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// `&&`, `||`, `!` and `(` read so far: each can deepen the tree, which evaluation and drop
    /// walk recursively, so their number bounds the stack a rule can take.
    nesting: usize,
}

/// Most `&&`, `||`, `!` and parentheses in one expression. Routing rules are short; without a
/// bound, `((((...` or a long `&&` chain from an app's subscription list would overflow the
/// stack of the task parsing or evaluating it and abort the daemon.
const MAX_NESTING: usize = 100;

const SUPPORTED: &str = "supported: event fields, literals, ==, !=, <, <=, >, >=, &&, ||, !, ( ), `in [..]` and has(event.field)";

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Token { kind: Tok::Op(o), .. }) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) {
            return Ok(());
        }
        Err(match self.peek() {
            Some(t) => format!(
                "column {}: expected `{op}`, found {}",
                t.col,
                t.kind.describe()
            ),
            None => format!("expected `{op}` at the end of the expression"),
        })
    }

    /// Counts one more level of nesting before it is parsed.
    fn nest(&mut self) -> Result<(), String> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(format!(
                "the expression is too complex: more than {MAX_NESTING} of &&, ||, ! and ( )"
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut left = self.and()?;
        while self.eat("||") {
            self.nest()?;
            let right = self.and()?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            self.nest()?;
            let right = self.unary()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, String> {
        if self.eat("!") {
            self.nest()?;
            return Ok(Node::Not(Box::new(self.unary()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, String> {
        let left = self.primary()?;
        let cmp = match self.peek().map(|t| &t.kind) {
            Some(Tok::Op("==")) => Cmp::Eq,
            Some(Tok::Op("!=")) => Cmp::Ne,
            Some(Tok::Op("<")) => Cmp::Lt,
            Some(Tok::Op("<=")) => Cmp::Le,
            Some(Tok::Op(">")) => Cmp::Gt,
            Some(Tok::Op(">=")) => Cmp::Ge,
            Some(Tok::Ident(w)) if w == "in" => {
                self.pos += 1;
                self.expect("[")?;
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.primary()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                return Ok(Node::In(Box::new(left), items));
            }
            Some(Tok::Op(op @ ("+" | "-" | "*" | "/" | "%"))) => {
                return Err(format!(
                    "column {}: arithmetic (`{op}`) is not supported in match expressions; {SUPPORTED}",
                    self.peek().map_or(0, |t| t.col)
                ));
            }
            Some(Tok::Op("?")) => {
                return Err(format!(
                    "column {}: the conditional operator `? :` is not supported; {SUPPORTED}",
                    self.peek().map_or(0, |t| t.col)
                ));
            }
            Some(Tok::Op("=")) => {
                return Err(format!(
                    "column {}: `=` is not an operator; compare with `==`",
                    self.peek().map_or(0, |t| t.col)
                ));
            }
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.primary()?;
        if let Some(Token {
            kind: Tok::Op(op @ ("==" | "!=" | "<" | "<=" | ">" | ">=")),
            col,
        }) = self.peek()
        {
            return Err(format!(
                "column {col}: comparisons cannot be chained (`{op}`); join them with && or ||"
            ));
        }
        Ok(Node::Cmp(cmp, Box::new(left), Box::new(right)))
    }

    fn primary(&mut self) -> Result<Node, String> {
        let Some(t) = self.next() else {
            return Err("the expression ends too early".into());
        };
        match t.kind {
            Tok::Str(s) => Ok(Node::Lit(Value::String(s))),
            Tok::Num(n) => Ok(Node::Lit(number(n))),
            Tok::Op("-") => match self.next() {
                Some(Token {
                    kind: Tok::Num(n), ..
                }) => Ok(Node::Lit(number(-n))),
                _ => Err(format!(
                    "column {}: arithmetic (`-`) is not supported in match expressions; {SUPPORTED}",
                    t.col
                )),
            },
            Tok::Op("(") => {
                self.nest()?;
                let inner = self.or()?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Ident(id) => match id.as_str() {
                "true" => Ok(Node::Lit(Value::Bool(true))),
                "false" => Ok(Node::Lit(Value::Bool(false))),
                "null" => Ok(Node::Lit(Value::Null)),
                "event" => Ok(Node::Path(self.steps()?)),
                "has" if self.eat("(") => {
                    let col = self.peek().map_or(t.col, |t| t.col);
                    let Some(Token {
                        kind: Tok::Ident(root),
                        ..
                    }) = self.next()
                    else {
                        return Err(format!(
                            "column {col}: has() takes a field such as event.data.x"
                        ));
                    };
                    let steps = self.steps()?;
                    if root != "event" || steps.is_empty() {
                        return Err(format!(
                            "column {col}: has() takes a field such as event.data.x"
                        ));
                    }
                    self.expect(")")?;
                    Ok(Node::Has(steps))
                }
                _ if matches!(
                    self.peek(),
                    Some(Token {
                        kind: Tok::Op("("),
                        ..
                    })
                ) =>
                {
                    Err(format!(
                        "column {}: function {id}() is not supported; {SUPPORTED}",
                        t.col
                    ))
                }
                _ if matches!(
                    self.peek(),
                    Some(Token {
                        kind: Tok::Op("."),
                        ..
                    })
                ) && matches!(
                    self.tokens.get(self.pos + 2),
                    Some(Token {
                        kind: Tok::Op("("),
                        ..
                    })
                ) =>
                {
                    Err(format!(
                        "column {}: methods such as {id}.{}() are not supported; {SUPPORTED}",
                        t.col,
                        match self.tokens.get(self.pos + 1).map(|t| &t.kind) {
                            Some(Tok::Ident(m)) => m.as_str(),
                            _ => "f",
                        }
                    ))
                }
                _ => Err(format!(
                    "column {}: unknown name `{id}`; match expressions see only `event` (the CloudEvent)",
                    t.col
                )),
            },
            Tok::Op("{") => Err(format!(
                "column {}: map literals are not supported; {SUPPORTED}",
                t.col
            )),
            other => Err(format!("column {}: unexpected {}", t.col, other.describe())),
        }
    }

    /// `.name`, `["name"]` and `[0]` steps after `event`.
    fn steps(&mut self) -> Result<Vec<Step>, String> {
        let mut steps = Vec::new();
        loop {
            if self.eat(".") {
                match self.next() {
                    Some(Token {
                        kind: Tok::Ident(name),
                        col,
                    }) => {
                        if matches!(
                            self.peek(),
                            Some(Token {
                                kind: Tok::Op("("),
                                ..
                            })
                        ) {
                            return Err(format!(
                                "column {col}: methods such as .{name}() are not supported; {SUPPORTED}"
                            ));
                        }
                        steps.push(Step::Key(name));
                    }
                    Some(t) => {
                        return Err(format!(
                            "column {}: expected a field name after `.`, found {}",
                            t.col,
                            t.kind.describe()
                        ));
                    }
                    None => return Err("expected a field name after `.`".into()),
                }
            } else if self.eat("[") {
                match self.next() {
                    Some(Token {
                        kind: Tok::Str(s), ..
                    }) => steps.push(Step::Key(s)),
                    Some(Token {
                        kind: Tok::Num(n),
                        col,
                    }) => {
                        if n < 0.0 || n.fract() != 0.0 || n > 1e9 {
                            return Err(format!("column {col}: {n} is not a list index"));
                        }
                        steps.push(Step::Index(n as usize));
                    }
                    Some(t) => {
                        return Err(format!(
                            "column {}: an index must be a string or a number, found {}",
                            t.col,
                            t.kind.describe()
                        ));
                    }
                    None => return Err("expected an index after `[`".into()),
                }
                self.expect("]")?;
            } else {
                return Ok(steps);
            }
        }
    }
}

fn number(n: f64) -> Value {
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

// ---- evaluation ----

fn lookup<'a>(event: &'a Value, steps: &[Step]) -> Result<&'a Value, EvalError> {
    let mut v = event;
    for s in steps {
        v = match (s, v) {
            (Step::Key(k), Value::Object(m)) => m
                .get(k)
                .ok_or_else(|| EvalError(format!("no such key: {k}")))?,
            (Step::Index(i), Value::Array(a)) => a
                .get(*i)
                .ok_or_else(|| EvalError(format!("index out of range: {i}")))?,
            (Step::Key(k), _) => {
                return Err(EvalError(format!("no such key: {k} (not an object)")));
            }
            (Step::Index(i), _) => {
                return Err(EvalError(format!("cannot index with {i}: not a list")));
            }
        };
    }
    Ok(v)
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        _ => a == b,
    }
}

fn order(op: Cmp, a: &Value, b: &Value) -> Result<bool, EvalError> {
    let o = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .ok_or_else(|| EvalError("cannot compare NaN".into()))?,
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => {
            return Err(EvalError(format!(
                "no such overload: cannot order {} and {}",
                kind(a),
                kind(b)
            )));
        }
    };
    Ok(match op {
        Cmp::Lt => o.is_lt(),
        Cmp::Le => o.is_le(),
        Cmp::Gt => o.is_gt(),
        Cmp::Ge => o.is_ge(),
        Cmp::Eq | Cmp::Ne => false,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

fn as_bool(r: Result<Value, EvalError>) -> Result<bool, EvalError> {
    match r? {
        Value::Bool(b) => Ok(b),
        other => Err(EvalError(format!(
            "no such overload: expected a boolean, found {}",
            kind(&other)
        ))),
    }
}

fn eval(node: &Node, event: &Value) -> Result<Value, EvalError> {
    match node {
        Node::Lit(v) => Ok(v.clone()),
        Node::Path(steps) => lookup(event, steps).cloned(),
        Node::Has(steps) => Ok(Value::Bool(lookup(event, steps).is_ok())),
        Node::Not(n) => Ok(Value::Bool(!as_bool(eval(n, event))?)),
        // CEL's commutative logic: a decisive side wins over an error on the other.
        Node::And(a, b) => match (as_bool(eval(a, event)), as_bool(eval(b, event))) {
            (Ok(false), _) | (_, Ok(false)) => Ok(Value::Bool(false)),
            (Ok(true), Ok(true)) => Ok(Value::Bool(true)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        Node::Or(a, b) => match (as_bool(eval(a, event)), as_bool(eval(b, event))) {
            (Ok(true), _) | (_, Ok(true)) => Ok(Value::Bool(true)),
            (Ok(false), Ok(false)) => Ok(Value::Bool(false)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        Node::Cmp(op, a, b) => {
            let (a, b) = (eval(a, event)?, eval(b, event)?);
            let r = match op {
                Cmp::Eq => equal(&a, &b),
                Cmp::Ne => !equal(&a, &b),
                _ => order(*op, &a, &b)?,
            };
            Ok(Value::Bool(r))
        }
        Node::In(x, items) => {
            let x = eval(x, event)?;
            for item in items {
                if equal(&x, &eval(item, event)?) {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({
            "type": "widget",
            "source": "factory-1",
            "data": {"size": 12, "colour": "red", "tags": ["a", "b"], "ok": true, "my-key": 1.5}
        })
    }

    fn m(expr: &str) -> Result<bool, EvalError> {
        Expr::parse(expr).unwrap().matches(&event())
    }

    /// Found by the `pubsub_event` fuzz target: 50,000 `(` overflowed the stack (SIGSEGV).
    #[test]
    fn deep_or_long_expressions_are_refused_without_overflowing_the_stack() {
        let chain = |n: usize| vec!["event.data.ok"; n].join(" && ");
        for src in [
            "(".repeat(50_000),
            format!("{}true", "!".repeat(50_000)),
            chain(50_000),
            vec!["true"; 50_000].join(" || "),
        ] {
            let e = Expr::parse(&src).unwrap_err();
            assert!(e.contains("too complex"), "{e}");
        }
        assert_eq!(
            Expr::parse(&chain(MAX_NESTING + 1))
                .unwrap()
                .matches(&event()),
            Ok(true)
        );
        assert!(Expr::parse(&chain(MAX_NESTING + 2)).is_err());
        let nested = format!("{}true{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert_eq!(Expr::parse(&nested).unwrap().matches(&event()), Ok(true));
    }

    #[test]
    fn the_forms_dapr_documents_work() {
        assert_eq!(m(r#"event.type == "widget""#), Ok(true));
        assert_eq!(m(r#"event.type == 'gadget'"#), Ok(false));
        assert_eq!(m(r#"event.type != "gadget""#), Ok(true));
        assert_eq!(
            m(r#"event.data.size > 10 && event.data.colour == "red""#),
            Ok(true)
        );
        assert_eq!(
            m(r#"event.data.size < 10 || event.source == "factory-1""#),
            Ok(true)
        );
        assert_eq!(m("event.data.size == 12.0"), Ok(true));
        assert_eq!(
            m("event.data.size >= 12 && event.data.size <= 12"),
            Ok(true)
        );
        assert_eq!(m("!(event.data.ok == false)"), Ok(true));
        assert_eq!(m("event.data.ok"), Ok(true));
        assert_eq!(m(r#"event.data["my-key"] == 1.5"#), Ok(true));
        assert_eq!(m(r#"event.data.tags[1] == "b""#), Ok(true));
        assert_eq!(m(r#"event.type in ["gadget", "widget"]"#), Ok(true));
        assert_eq!(
            m("has(event.data.size) && !has(event.data.weight)"),
            Ok(true)
        );
        assert_eq!(m("event.data.size == -3"), Ok(false));
    }

    #[test]
    fn cel_error_semantics() {
        assert_eq!(
            m("event.data.weight > 1"),
            Err(EvalError("no such key: weight".into()))
        );
        // The decisive side absorbs the error.
        assert_eq!(
            m(r#"event.type == "gadget" && event.data.weight > 1"#),
            Ok(false)
        );
        assert_eq!(
            m(r#"event.data.weight > 1 || event.type == "widget""#),
            Ok(true)
        );
        assert!(m(r#"event.data.weight > 1 || event.type == "gadget""#).is_err());
        // Equality across types is false; ordering across types is an error.
        assert_eq!(m(r#"event.data.size == "12""#), Ok(false));
        assert!(m(r#"event.data.size > "1""#).is_err());
        assert!(
            m("event.data.size").is_err(),
            "a number is not a match result"
        );
    }

    #[test]
    fn unsupported_forms_are_refused_precisely() {
        let err = |e: &str| Expr::parse(e).unwrap_err();
        assert!(err("size(event.data) > 1").contains("column 1: function size() is not supported"));
        assert!(err(r#"event.type.startsWith("w")"#).contains(".startsWith() are not supported"));
        assert!(err("event.data.size + 1 > 2").contains("arithmetic"));
        assert!(err("event.data.ok ? true : false").contains("conditional"));
        assert!(err("data.size > 1").contains("unknown name `data`"));
        assert!(err(r#"event.type = "x""#).contains("compare with `==`"));
        assert!(err("1 < event.data.size < 20").contains("cannot be chained"));
        assert!(err(r#"event.type == "open"#).contains("not closed"));
        assert!(err("(event.data.ok").contains("expected `)`"));
        assert!(err("event.type ==").contains("ends too early"));
        assert!(err("event.type # 1").contains("column 12: unexpected character '#'"));
    }
}
