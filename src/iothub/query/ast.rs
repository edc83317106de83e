//! The syntax tree of the query language, and how to print it back as query text.
//!
//! The tree keeps names as written (projection keys come from them) and drops what does
//! not change the meaning: parentheses, the case of keywords and function names, and
//! whether a name was written plain or in `[[...]]`. Printing (`Display`) puts
//! parentheses back only where precedence needs them and brackets around names that are
//! not plain identifiers, so `parse(print(tree)) == tree`; a property test checks that.
//!
//! `AND`, `OR` and chains of `+ -` or `* / %` are n-ary nodes rather than nested binary
//! ones: a long chain (`ring = 'a' OR ring = 'b' OR ...`, which rollout widening builds)
//! then adds no depth, and only parentheses, `NOT`, unary `-` and function calls nest.
//! That keeps every recursive walk (evaluation, printing, dropping) shallow.

use std::fmt;

/// Words that cannot be plain property names: write `[[group]]` for a key named `group`.
pub const KEYWORDS: &[&str] = &[
    "SELECT",
    "TOP",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "NIN",
    "NULL",
    "UNDEFINED",
    "TRUE",
    "FALSE",
];

/// True when `word` is a keyword (any case).
pub fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// True when `name` can be written without `[[...]]`.
pub fn is_plain_name(name: &str) -> bool {
    let mut cs = name.chars();
    cs.next().is_some_and(super::lexer::is_word_start)
        && cs.all(super::lexer::is_word_char)
        && !is_keyword(name)
}

/// A constant.
#[derive(Clone, Debug, PartialEq)]
pub enum Const {
    /// `UNDEFINED`: what a missing property reads as.
    Undefined,
    /// `NULL`.
    Null,
    /// `TRUE` or `FALSE`.
    Bool(bool),
    /// An integer literal (`42`, `-3`).
    Int(i64),
    /// A number literal with a fraction or exponent, or too large for `i64`.
    Float(f64),
    /// A string literal (`'canary'`), unescaped.
    Str(String),
}

/// A dotted property path relative to the twin root, names as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Path(pub Vec<String>);

impl Path {
    /// The lowercase dotted form used for interning (`tags.ring`).
    pub fn lowercase(&self) -> String {
        self.0.join(".").to_lowercase()
    }
    /// True for `configurations.<id>.status`, whose comparisons ignore case.
    pub fn is_configuration_status(&self) -> bool {
        self.0.len() == 3
            && self.0[0].eq_ignore_ascii_case("configurations")
            && self.0[2].eq_ignore_ascii_case("status")
    }
    /// The key a projection of this path gets without `AS`: the last name as written,
    /// first letter lowercased (`DeviceId` → `deviceId`), as IoT Hub does.
    pub fn output_name(&self) -> String {
        let last = self.0.last().map_or("", String::as_str);
        let mut cs = last.chars();
        match cs.next() {
            Some(c) => c.to_lowercase().chain(cs).collect(),
            None => String::new(),
        }
    }
}

/// `+` or `-` in a sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOp {
    /// `+`
    Add,
    /// `-`
    Sub,
}

/// `*`, `/` or `%` in a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MulOp {
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

/// A comparison operator. `<>` parses as [`CmpOp::Ne`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A scalar function of the WHERE clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    /// `IS_DEFINED(x)`
    IsDefined,
    /// `IS_NULL(x)`
    IsNull,
    /// `IS_BOOL(x)`
    IsBool,
    /// `IS_NUMBER(x)`
    IsNumber,
    /// `IS_STRING(x)`
    IsString,
    /// `IS_OBJECT(x)`
    IsObject,
    /// `IS_ARRAY(x)`
    IsArray,
    /// `IS_PRIMITIVE(x)`: null, boolean, number or string.
    IsPrimitive,
    /// `STARTSWITH(s, prefix)`
    StartsWith,
    /// `ENDSWITH(s, suffix)`
    EndsWith,
    /// `CONTAINS(s, part)`
    Contains,
    /// `LOWER(s)`
    Lower,
    /// `UPPER(s)`
    Upper,
    /// `LENGTH(s)`
    Length,
}

impl Func {
    /// Every function, in the order error messages list them.
    pub const ALL: [Func; 14] = [
        Func::IsDefined,
        Func::IsNull,
        Func::IsBool,
        Func::IsNumber,
        Func::IsString,
        Func::IsObject,
        Func::IsArray,
        Func::IsPrimitive,
        Func::StartsWith,
        Func::EndsWith,
        Func::Contains,
        Func::Lower,
        Func::Upper,
        Func::Length,
    ];

    /// The canonical (uppercase) name.
    pub fn name(self) -> &'static str {
        match self {
            Func::IsDefined => "IS_DEFINED",
            Func::IsNull => "IS_NULL",
            Func::IsBool => "IS_BOOL",
            Func::IsNumber => "IS_NUMBER",
            Func::IsString => "IS_STRING",
            Func::IsObject => "IS_OBJECT",
            Func::IsArray => "IS_ARRAY",
            Func::IsPrimitive => "IS_PRIMITIVE",
            Func::StartsWith => "STARTSWITH",
            Func::EndsWith => "ENDSWITH",
            Func::Contains => "CONTAINS",
            Func::Lower => "LOWER",
            Func::Upper => "UPPER",
            Func::Length => "LENGTH",
        }
    }

    /// How many arguments it takes.
    pub fn arity(self) -> usize {
        match self {
            Func::StartsWith | Func::EndsWith | Func::Contains => 2,
            _ => 1,
        }
    }

    /// Looks a name up, ignoring case.
    pub fn from_name(name: &str) -> Option<Func> {
        Func::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

/// An expression of the WHERE clause (or a target condition).
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A literal.
    Const(Const),
    /// An array constant, `['a', 'b']`.
    Array(Vec<Const>),
    /// A property of the twin (`tags.ring`).
    Path(Path),
    /// Unary minus (on anything but a number literal, which folds into the constant).
    Neg(Box<Expr>),
    /// `NOT expr`.
    Not(Box<Expr>),
    /// Two or more operands.
    And(Vec<Expr>),
    /// Two or more operands.
    Or(Vec<Expr>),
    /// `first (+|-) x (+|-) y ...`, at least one more operand.
    Sum(Box<Expr>, Vec<(AddOp, Expr)>),
    /// `first (*|/|%) x ...`, at least one more operand.
    Product(Box<Expr>, Vec<(MulOp, Expr)>),
    /// `left op right`.
    Compare(CmpOp, Box<Expr>, Box<Expr>),
    /// `expr IN [...]`, or `expr NIN [...]` when `negated`.
    In {
        /// The value looked up in the list.
        expr: Box<Expr>,
        /// The constants to compare it with.
        list: Vec<Const>,
        /// True for `NIN`.
        negated: bool,
    },
    /// A function call with its arguments (as many as [`Func::arity`]).
    Call(Func, Vec<Expr>),
}

/// An aggregate that takes a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    /// `SUM(path)`
    Sum,
    /// `AVG(path)`
    Avg,
    /// `MIN(path)`
    Min,
    /// `MAX(path)`
    Max,
}

impl AggFunc {
    /// The canonical (uppercase) name.
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Sum => "SUM",
            AggFunc::Avg => "AVG",
            AggFunc::Min => "MIN",
            AggFunc::Max => "MAX",
        }
    }
    /// Looks a name up, ignoring case.
    pub fn from_name(name: &str) -> Option<AggFunc> {
        [AggFunc::Sum, AggFunc::Avg, AggFunc::Min, AggFunc::Max]
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

/// What one SELECT item reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Projection {
    /// A property (`tags.ring`), or an object under it.
    Path(Path),
    /// `COUNT()`.
    Count,
    /// `SUM(path)`, `AVG(path)`, `MIN(path)`, `MAX(path)`.
    Agg(AggFunc, Path),
}

/// One SELECT item with its optional `AS` alias.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectItem {
    /// What the item reads.
    pub projection: Projection,
    /// The output key given with `AS`; without it a path uses [`Path::output_name`].
    pub alias: Option<String>,
}

/// A whole `SELECT ... FROM devices ...` statement.
#[derive(Clone, Debug, PartialEq)]
pub struct Select {
    /// `TOP n`: the most rows to return.
    pub top: Option<u64>,
    /// `None` for `SELECT *`.
    pub items: Option<Vec<SelectItem>>,
    /// The `WHERE` condition; `None` selects every twin.
    pub filter: Option<Expr>,
    /// The `GROUP BY` paths; empty when there is none.
    pub group_by: Vec<Path>,
}

// ---------------------------------------------------------------------------------------
// Printing

/// Binding strength, loosest first (as in SQL). The parser builds trees with it and the
/// printer puts parentheses where an operand binds looser than its place needs: one table,
/// so that printing and parsing agree.
pub(crate) mod prec {
    pub const OR: u8 = 1;
    pub const AND: u8 = 2;
    pub const NOT: u8 = 3;
    pub const CMP: u8 = 4;
    pub const SUM: u8 = 5;
    pub const PRODUCT: u8 = 6;
    pub const NEG: u8 = 7;
    pub const ATOM: u8 = 8;
}

impl Expr {
    fn prec(&self) -> u8 {
        match self {
            Expr::Or(_) => prec::OR,
            Expr::And(_) => prec::AND,
            Expr::Not(_) => prec::NOT,
            Expr::Compare(..) | Expr::In { .. } => prec::CMP,
            Expr::Sum(..) => prec::SUM,
            Expr::Product(..) => prec::PRODUCT,
            Expr::Neg(_) => prec::NEG,
            Expr::Const(_) | Expr::Array(_) | Expr::Path(_) | Expr::Call(..) => prec::ATOM,
        }
    }
}

/// Writes `e`, in parentheses when it binds looser than `min`.
fn operand(f: &mut fmt::Formatter<'_>, e: &Expr, min: u8) -> fmt::Result {
    if e.prec() < min {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

/// Writes a property name, in `[[...]]` when it is not a plain identifier.
pub(crate) fn write_name(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    if is_plain_name(name) {
        f.write_str(name)
    } else {
        write!(f, "[[{name}]]")
    }
}

impl fmt::Display for Const {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Const::Undefined => f.write_str("undefined"),
            Const::Null => f.write_str("null"),
            Const::Bool(b) => write!(f, "{b}"),
            Const::Int(i) => write!(f, "{i}"),
            // `{:?}` keeps a '.' or an exponent, so the literal reads back as a float.
            Const::Float(x) => write!(f, "{x:?}"),
            Const::Str(s) => {
                f.write_str("'")?;
                for c in s.chars() {
                    match c {
                        '\'' => f.write_str("\\'")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        '\t' => f.write_str("\\t")?,
                        '\r' => f.write_str("\\r")?,
                        c if c.is_control() => write!(f, "\\u{:04x}", c as u32)?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("'")
            }
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write_name(f, name)?;
        }
        Ok(())
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        })
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, list: &[Const]) -> fmt::Result {
    f.write_str("[")?;
    for (i, c) in list.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("]")
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Const(c) => write!(f, "{c}"),
            Expr::Array(list) => write_list(f, list),
            Expr::Path(p) => write!(f, "{p}"),
            Expr::Neg(e) => {
                // `- 5` would read back as the constant -5: parenthesize number literals.
                // A nested minus gets a space (`- -x`), anything looser parentheses.
                if matches!(**e, Expr::Const(Const::Int(_) | Const::Float(_)))
                    || e.prec() < prec::NEG
                {
                    write!(f, "-({e})")
                } else if matches!(**e, Expr::Neg(_)) {
                    write!(f, "- {e}")
                } else {
                    write!(f, "-{e}")
                }
            }
            Expr::Not(e) => {
                f.write_str("NOT ")?;
                operand(f, e, prec::NOT)
            }
            Expr::And(items) | Expr::Or(items) => {
                let (sep, min) = match self {
                    Expr::And(_) => (" AND ", prec::AND + 1),
                    _ => (" OR ", prec::OR + 1),
                };
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    operand(f, e, min)?;
                }
                Ok(())
            }
            Expr::Sum(first, rest) => {
                operand(f, first, prec::SUM + 1)?;
                for (op, e) in rest {
                    f.write_str(match op {
                        AddOp::Add => " + ",
                        AddOp::Sub => " - ",
                    })?;
                    operand(f, e, prec::SUM + 1)?;
                }
                Ok(())
            }
            Expr::Product(first, rest) => {
                operand(f, first, prec::PRODUCT + 1)?;
                for (op, e) in rest {
                    f.write_str(match op {
                        MulOp::Mul => " * ",
                        MulOp::Div => " / ",
                        MulOp::Rem => " % ",
                    })?;
                    operand(f, e, prec::PRODUCT + 1)?;
                }
                Ok(())
            }
            Expr::Compare(op, l, r) => {
                operand(f, l, prec::CMP + 1)?;
                write!(f, " {op} ")?;
                operand(f, r, prec::CMP + 1)
            }
            Expr::In {
                expr,
                list,
                negated,
            } => {
                operand(f, expr, prec::CMP + 1)?;
                f.write_str(if *negated { " NIN " } else { " IN " })?;
                write_list(f, list)
            }
            Expr::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Projection::Path(p) => write!(f, "{p}"),
            Projection::Count => f.write_str("COUNT()"),
            Projection::Agg(func, p) => write!(f, "{}({p})", func.name()),
        }
    }
}

impl fmt::Display for SelectItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.projection)?;
        if let Some(alias) = &self.alias {
            f.write_str(" AS ")?;
            write_name(f, alias)?;
        }
        Ok(())
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SELECT ")?;
        if let Some(n) = self.top {
            write!(f, "TOP {n} ")?;
        }
        match &self.items {
            None => f.write_str("*")?,
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
            }
        }
        f.write_str(" FROM devices")?;
        if let Some(e) = &self.filter {
            write!(f, " WHERE {e}")?;
        }
        for (i, p) in self.group_by.iter().enumerate() {
            f.write_str(if i == 0 { " GROUP BY " } else { ", " })?;
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
