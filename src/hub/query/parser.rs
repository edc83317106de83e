//! The parser: tokens to a syntax tree, with errors that say what was expected and found.
//!
//! Recursive descent, loosest binding first, as SQL binds:
//!
//! ```text
//! or      := and (OR and)*
//! and     := not (AND not)*
//! not     := NOT not | cmp
//! cmp     := sum [(= | != | <> | < | <= | > | >=) sum | (IN | NIN | NOT IN) array]
//! sum     := product ((+ | -) product)*
//! product := unary ((* | / | %) unary)*
//! unary   := - unary | primary                  (-<number> folds into the constant)
//! primary := constant | array | ( or ) | FUNC ( [or (, or)*] ) | name (. name)*
//! name    := identifier that is not a keyword | [[any name]]
//! ```
//!
//! Comparisons do not chain (`a = b = c` is an error asking for parentheses). Nesting
//! (parentheses, `NOT`, unary `-`, function calls) is capped at [`MAX_DEPTH`], so no input
//! can exhaust the stack here or in any later walk of the tree.

use super::ast::{
    AddOp, AggFunc, CmpOp, Const, Expr, Func, MulOp, Path, Projection, Select, SelectItem, is_keyword,
};
use super::lexer::{Tok, Token, lex};
use super::{MAX_DEPTH, MAX_QUERY_CHARS, QueryError};

type Result<T> = std::result::Result<T, QueryError>;

/// Refuses text over the length limit, with the column just past it.
pub(crate) fn check_length(text: &str) -> Result<()> {
    let n = text.chars().count();
    if n > MAX_QUERY_CHARS {
        return Err(QueryError {
            column: MAX_QUERY_CHARS + 1,
            message: format!(
                "the query is {n} characters long; IoT Hub allows at most {MAX_QUERY_CHARS} characters"
            ),
        });
    }
    Ok(())
}

/// Parses a bare predicate. Returns the expression and the byte range it spans.
pub(crate) fn parse_condition(text: &str) -> Result<Expr> {
    check_length(text)?;
    let mut p = Parser::new(text)?;
    if p.is_kw(0, "SELECT") {
        return Err(p.error_here(
            "expected a condition, found keyword SELECT: a target condition is only the predicate, \
             as after WHERE (like tags.environment = 'prod')"
                .into(),
        ));
    }
    if p.is_kw(0, "FROM") {
        return Err(p.error_here(
            "expected a condition, found keyword FROM: the embedded hub supports device target \
             conditions only, not module ones (FROM devices.modules WHERE ...)"
                .into(),
        ));
    }
    let e = p.or()?;
    if !p.at(&Tok::End) {
        return Err(p.expected("an operator, AND, OR or the end of the condition", false));
    }
    Ok(e)
}

/// A parsed statement with the source positions later checks need.
pub(crate) struct Parsed {
    pub select: Select,
    /// The byte range of the WHERE expression.
    pub where_span: Option<(usize, usize)>,
    /// The column of each SELECT item.
    pub item_cols: Vec<usize>,
}

/// Parses a full `SELECT` statement.
pub(crate) fn parse_select(text: &str) -> Result<Parsed> {
    check_length(text)?;
    let mut p = Parser::new(text)?;
    if !p.is_kw(0, "SELECT") {
        return Err(p.expected("SELECT at the start of the query", false));
    }
    p.bump();
    let mut top = None;
    if p.is_kw(0, "TOP") {
        p.bump();
        top = Some(p.top_count()?);
    }
    let mut item_cols = Vec::new();
    let items = if p.at(&Tok::Star) {
        p.bump();
        None
    } else {
        item_cols.push(p.tok(0).col);
        let mut items = vec![p.select_item()?];
        while p.at(&Tok::Comma) {
            p.bump();
            item_cols.push(p.tok(0).col);
            items.push(p.select_item()?);
        }
        Some(items)
    };
    if !p.is_kw(0, "FROM") {
        let what = if items.is_none() { "FROM after '*'" } else { "',' or FROM after the selected item" };
        return Err(p.expected(what, false));
    }
    p.bump();
    p.from()?;
    let mut filter = None;
    let mut span = None;
    if p.is_kw(0, "WHERE") {
        p.bump();
        let start = p.tok(0).start;
        filter = Some(p.or()?);
        span = Some((start, p.toks[p.pos - 1].end));
    }
    let mut group_by = Vec::new();
    if p.is_kw(0, "GROUP") {
        p.bump();
        if !p.is_kw(0, "BY") {
            return Err(p.expected("BY after GROUP", false));
        }
        p.bump();
        group_by.push(p.path_expecting("a property path after 'BY'")?);
        while p.at(&Tok::Comma) {
            p.bump();
            group_by.push(p.path_expecting("a property path after ','")?);
        }
    }
    if !p.at(&Tok::End) {
        let what = match (filter.is_some(), group_by.is_empty()) {
            (_, false) => "',' or the end of the query",
            (true, true) => "an operator, AND, OR, GROUP BY or the end of the query",
            (false, true) => "WHERE, GROUP BY or the end of the query",
        };
        return Err(p.expected(what, false));
    }
    Ok(Parsed { select: Select { top, items, filter, group_by }, where_span: span, item_cols })
}

struct Parser<'t> {
    text: &'t str,
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl<'t> Parser<'t> {
    fn new(text: &'t str) -> Result<Parser<'t>> {
        Ok(Parser { text, toks: lex(text)?, pos: 0, depth: 0 })
    }

    // --- token helpers -----------------------------------------------------------------

    fn tok(&self, ahead: usize) -> &Token {
        let last = self.toks.len() - 1;
        &self.toks[(self.pos + ahead).min(last)]
    }

    fn at(&self, t: &Tok) -> bool {
        &self.tok(0).tok == t
    }

    fn is_kw(&self, ahead: usize, kw: &str) -> bool {
        matches!(&self.tok(ahead).tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn bump(&mut self) -> Token {
        let t = self.tok(0).clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    /// The source text of the token before the current one, shortened for messages.
    fn prev_text(&self) -> Option<String> {
        let t = self.toks.get(self.pos.checked_sub(1)?)?;
        Some(shorten(&self.text[t.start..t.end]))
    }

    fn error_here(&self, message: String) -> QueryError {
        QueryError { column: self.tok(0).col, message }
    }

    /// "expected {what}[ after '{previous}'][, found {current}]". The "after" part is for
    /// operands; at the end of the input after an operand position the "found" part is
    /// left out ("expected a value after '='").
    fn expected(&self, what: &str, after: bool) -> QueryError {
        let mut m = format!("expected {what}");
        let prev = if after { self.prev_text() } else { None };
        if let Some(prev) = &prev {
            m.push_str(&format!(" after '{prev}'"));
        }
        if prev.is_none() || !self.at(&Tok::End) {
            m.push_str(", found ");
            m.push_str(&describe(&self.tok(0).tok));
        }
        self.error_here(m)
    }

    /// Like [`Parser::expected`], where a property name would do: a keyword found there
    /// (`group`, `from`, ...) gets the hint to write it in `[[...]]`.
    fn expected_name(&self, what: &str, after: bool) -> QueryError {
        let mut e = self.expected(what, after);
        if let Tok::Word(w) = &self.tok(0).tok
            && is_keyword(w)
            && !is_value_keyword(w)
            && !["AND", "OR", "NOT", "IN", "NIN"].iter().any(|k| k.eq_ignore_ascii_case(w))
        {
            e.message.push_str(&format!(" (to use it as a property name, write [[{w}]])"));
        }
        e
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here(format!(
                "the expression nests deeper than {MAX_DEPTH} levels (parentheses, NOT, '-' and function calls)"
            )));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    // --- SELECT parts ------------------------------------------------------------------

    fn top_count(&mut self) -> Result<u64> {
        if let Tok::Number(n) = &self.tok(0).tok
            && let Ok(Const::Int(v)) = number(n, false)
            && v >= 0
        {
            self.bump();
            return Ok(v as u64);
        }
        Err(self.expected("a whole number of rows after TOP (like TOP 10)", false))
    }

    fn select_item(&mut self) -> Result<SelectItem> {
        let projection = match &self.tok(0).tok {
            Tok::Word(w) if self.tok(1).tok == Tok::LParen => {
                let name = w.clone();
                let col = self.tok(0).col;
                self.bump();
                self.bump();
                if name.eq_ignore_ascii_case("COUNT") {
                    if !self.at(&Tok::RParen) {
                        return Err(self.expected("')' after 'COUNT(' (COUNT takes no argument)", false));
                    }
                    self.bump();
                    Projection::Count
                } else if let Some(f) = AggFunc::from_name(&name) {
                    let path = self.path_expecting(&format!("a property path in {}(", f.name()))?;
                    if !self.at(&Tok::RParen) {
                        return Err(self.expected(&format!("')' to close {}(", f.name()), false));
                    }
                    self.bump();
                    Projection::Agg(f, path)
                } else {
                    return Err(QueryError {
                        column: col,
                        message: format!(
                            "{name}() cannot be selected: SELECT takes *, property paths and the \
                             aggregates COUNT(), SUM(), AVG(), MIN(), MAX()"
                        ),
                    });
                }
            }
            _ => Projection::Path(self.path_expecting("*, a property path or COUNT() after SELECT")?),
        };
        let mut alias = None;
        if self.is_kw(0, "AS") {
            self.bump();
            alias = Some(match &self.tok(0).tok {
                Tok::Word(w) if !is_keyword(w) => w.clone(),
                Tok::Bracketed(b) => b.clone(),
                _ => return Err(self.expected_name("a name after AS", false)),
            });
            self.bump();
        } else if projection == Projection::Count {
            return Err(self.expected("AS and a name after COUNT() (like COUNT() AS n)", false));
        }
        Ok(SelectItem { projection, alias })
    }

    fn from(&mut self) -> Result<()> {
        let col = self.tok(0).col;
        match &self.tok(0).tok {
            Tok::Word(w) if w.eq_ignore_ascii_case("devices") => {}
            _ => return Err(self.expected("devices after FROM", false)),
        }
        self.bump();
        if self.at(&Tok::Dot) {
            let what = match &self.tok(1).tok {
                Tok::Word(w) => format!("devices.{w}"),
                Tok::Bracketed(w) => format!("devices.[[{w}]]"),
                _ => "devices.".into(),
            };
            return Err(QueryError {
                column: col,
                message: format!(
                    "FROM {what} is not supported: the embedded hub supports FROM devices only \
                     (not devices.modules or devices.jobs)"
                ),
            });
        }
        Ok(())
    }

    // --- expressions -------------------------------------------------------------------

    fn or(&mut self) -> Result<Expr> {
        self.enter()?;
        let first = self.and()?;
        let e = if self.is_kw(0, "OR") {
            let mut items = vec![first];
            while self.is_kw(0, "OR") {
                self.bump();
                items.push(self.and()?);
            }
            Expr::Or(items)
        } else {
            first
        };
        self.leave();
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr> {
        let first = self.not()?;
        if !self.is_kw(0, "AND") {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.is_kw(0, "AND") {
            self.bump();
            items.push(self.not()?);
        }
        Ok(Expr::And(items))
    }

    fn not(&mut self) -> Result<Expr> {
        if self.is_kw(0, "NOT") {
            self.bump();
            self.enter()?;
            let e = self.not()?;
            self.leave();
            return Ok(Expr::Not(Box::new(e)));
        }
        self.cmp()
    }

    fn cmp_op(&self) -> Option<CmpOp> {
        Some(match self.tok(0).tok {
            Tok::Eq => CmpOp::Eq,
            Tok::Ne => CmpOp::Ne,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            _ => return None,
        })
    }

    /// `IN`, `NIN` or `NOT IN` here: whether it negates, and how many tokens it takes.
    fn in_op(&self) -> Option<(bool, usize)> {
        if self.is_kw(0, "IN") {
            Some((false, 1))
        } else if self.is_kw(0, "NIN") {
            Some((true, 1))
        } else if self.is_kw(0, "NOT") && self.is_kw(1, "IN") {
            Some((true, 2))
        } else {
            None
        }
    }

    fn cmp(&mut self) -> Result<Expr> {
        let left = self.sum()?;
        let e = if let Some(op) = self.cmp_op() {
            self.bump();
            let right = self.sum()?;
            Expr::Compare(op, Box::new(left), Box::new(right))
        } else if let Some((negated, n)) = self.in_op() {
            for _ in 0..n {
                self.bump();
            }
            if !self.at(&Tok::LBracket) {
                return Err(self.expected("an array constant like ['a', 'b']", true));
            }
            let list = self.array()?;
            Expr::In { expr: Box::new(left), list, negated }
        } else {
            return Ok(left);
        };
        if self.cmp_op().is_some() || self.in_op().is_some() {
            return Err(self.error_here(format!(
                "comparisons cannot be chained: found {} after a comparison; add parentheses, \
                 like (a = b) = c",
                describe(&self.tok(0).tok)
            )));
        }
        Ok(e)
    }

    fn sum(&mut self) -> Result<Expr> {
        let first = self.product()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.tok(0).tok {
                Tok::Plus => AddOp::Add,
                Tok::Minus => AddOp::Sub,
                _ => break,
            };
            self.bump();
            rest.push((op, self.product()?));
        }
        Ok(if rest.is_empty() { first } else { Expr::Sum(Box::new(first), rest) })
    }

    fn product(&mut self) -> Result<Expr> {
        let first = self.unary()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.tok(0).tok {
                Tok::Star => MulOp::Mul,
                Tok::Slash => MulOp::Div,
                Tok::Percent => MulOp::Rem,
                _ => break,
            };
            self.bump();
            rest.push((op, self.unary()?));
        }
        Ok(if rest.is_empty() { first } else { Expr::Product(Box::new(first), rest) })
    }

    fn unary(&mut self) -> Result<Expr> {
        if !self.at(&Tok::Minus) {
            return self.primary();
        }
        self.bump();
        if let Tok::Number(n) = &self.tok(0).tok {
            let c = number(n, true).map_err(|m| self.error_here(m))?;
            self.bump();
            return Ok(Expr::Const(c));
        }
        self.enter()?;
        let e = self.unary()?;
        self.leave();
        Ok(Expr::Neg(Box::new(e)))
    }

    fn primary(&mut self) -> Result<Expr> {
        let tok = self.tok(0).tok.clone();
        match tok {
            Tok::Number(n) => {
                let c = number(&n, false).map_err(|m| self.error_here(m))?;
                self.bump();
                Ok(Expr::Const(c))
            }
            Tok::Str(s) => {
                self.bump();
                Ok(Expr::Const(Const::Str(s)))
            }
            Tok::LBracket => Ok(Expr::Array(self.array()?)),
            Tok::LParen => {
                let open = self.bump();
                let e = self.or()?;
                if !self.at(&Tok::RParen) {
                    return Err(self.expected(
                        &format!("')' to close the '(' at column {}", open.col),
                        false,
                    ));
                }
                self.bump();
                Ok(e)
            }
            Tok::Word(w) if self.tok(1).tok == Tok::LParen => self.call(&w),
            Tok::Word(w) if is_value_keyword(&w) => {
                self.bump();
                Ok(Expr::Const(value_keyword(&w)))
            }
            Tok::Word(w) if !is_keyword(&w) => Ok(Expr::Path(self.path()?)),
            Tok::Bracketed(_) => Ok(Expr::Path(self.path()?)),
            _ => Err(self.expected_name(
                if self.pos == 0 { "a condition" } else { "a value" },
                true,
            )),
        }
    }

    fn call(&mut self, name: &str) -> Result<Expr> {
        let col = self.tok(0).col;
        let Some(func) = Func::from_name(name) else {
            return Err(QueryError { column: col, message: unknown_function(name) });
        };
        self.bump();
        self.bump();
        self.enter()?;
        let mut args = Vec::new();
        if !self.at(&Tok::RParen) {
            args.push(self.or()?);
            while self.at(&Tok::Comma) {
                self.bump();
                args.push(self.or()?);
            }
            if !self.at(&Tok::RParen) {
                return Err(self.expected(&format!("',' or ')' in the arguments of {}", func.name()), false));
            }
        }
        self.bump();
        self.leave();
        if args.len() != func.arity() {
            let plural = if func.arity() == 1 { "argument" } else { "arguments" };
            return Err(QueryError {
                column: col,
                message: format!(
                    "{} takes {} {plural}, found {}",
                    func.name(),
                    func.arity(),
                    args.len()
                ),
            });
        }
        Ok(Expr::Call(func, args))
    }

    /// An array constant: `[` constants separated by `,` `]`.
    fn array(&mut self) -> Result<Vec<Const>> {
        self.bump(); // [
        let mut list = Vec::new();
        if self.at(&Tok::RBracket) {
            self.bump();
            return Ok(list);
        }
        loop {
            let negative = self.at(&Tok::Minus);
            if negative {
                self.bump();
            }
            let c = match self.tok(0).tok.clone() {
                Tok::Number(n) => number(&n, negative).map_err(|m| self.error_here(m))?,
                Tok::Str(s) if !negative => Const::Str(s),
                Tok::Word(w) if !negative && is_value_keyword(&w) && !w.eq_ignore_ascii_case("undefined") => {
                    value_keyword(&w)
                }
                _ => {
                    return Err(self.expected(
                        "a constant (a string, a number, true, false or null) in the array",
                        false,
                    ));
                }
            };
            self.bump();
            list.push(c);
            match self.tok(0).tok {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RBracket => {
                    self.bump();
                    return Ok(list);
                }
                _ => return Err(self.expected("',' or ']' in the array", false)),
            }
        }
    }

    fn path_expecting(&mut self, what: &str) -> Result<Path> {
        match &self.tok(0).tok {
            Tok::Word(w) if !is_keyword(w) && self.tok(1).tok != Tok::LParen => self.path(),
            Tok::Bracketed(_) => self.path(),
            _ => Err(self.expected_name(what, false)),
        }
    }

    /// `name (. name)*`; the current token is a name.
    fn path(&mut self) -> Result<Path> {
        let mut names = vec![match self.bump().tok {
            Tok::Word(w) | Tok::Bracketed(w) => w,
            _ => unreachable!("path() is only called on a name"),
        }];
        while self.at(&Tok::Dot) {
            self.bump();
            match &self.tok(0).tok {
                Tok::Word(w) if !is_keyword(w) => names.push(w.clone()),
                Tok::Bracketed(w) => names.push(w.clone()),
                Tok::Word(w) => {
                    let so_far = Path(names.clone());
                    return Err(self.error_here(format!(
                        "expected a property name after '.', found keyword {}: {w} is a keyword, \
                         write {so_far}.[[{w}]]",
                        w.to_uppercase()
                    )));
                }
                Tok::Number(n) => {
                    let so_far = Path(names.clone());
                    return Err(self.error_here(format!(
                        "expected a property name after '.', found number {n}: write {so_far}.[[{n}]]"
                    )));
                }
                _ => return Err(self.expected("a property name", true)),
            }
            self.bump();
        }
        Ok(Path(names))
    }
}

fn is_value_keyword(w: &str) -> bool {
    ["null", "undefined", "true", "false"].iter().any(|k| k.eq_ignore_ascii_case(w))
}

fn value_keyword(w: &str) -> Const {
    match w.to_ascii_lowercase().as_str() {
        "null" => Const::Null,
        "true" => Const::Bool(true),
        "false" => Const::Bool(false),
        _ => Const::Undefined,
    }
}

/// The message for a function name that is not supported, with a suggestion when the
/// name differs from a supported one only by underscores (`STARTS_WITH`).
fn unknown_function(name: &str) -> String {
    if name.eq_ignore_ascii_case("COUNT") || AggFunc::from_name(name).is_some() {
        return format!("{}() is an aggregate: it is allowed only in the SELECT list", name.to_uppercase());
    }
    let supported: Vec<&str> = Func::ALL.iter().map(|f| f.name()).collect();
    let squash = |s: &str| s.replace('_', "").to_ascii_uppercase();
    let hint = Func::ALL
        .iter()
        .find(|f| squash(f.name()) == squash(name))
        .map(|f| format!(": write {}", f.name()))
        .unwrap_or_default();
    format!(
        "unknown function {}{hint} (supported functions: {})",
        shorten(name),
        supported.join(", ")
    )
}

/// Converts a number literal (optionally negated) to a constant.
pub(crate) fn number(text: &str, negative: bool) -> std::result::Result<Const, String> {
    let sign: i128 = if negative { -1 } else { 1 };
    let shown = if negative { format!("-{text}") } else { text.to_string() };
    let out_of_range = || format!("the number {} is out of range", shorten(&shown));
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        let v = u128::from_str_radix(hex, 16).map_err(|_| out_of_range())?;
        let v = i128::try_from(v).map_err(|_| out_of_range())? * sign;
        return Ok(match i64::try_from(v) {
            Ok(i) => Const::Int(i),
            Err(_) => Const::Float(v as f64),
        });
    }
    let is_int = !text.contains(['.', 'e', 'E']);
    if is_int && let Ok(v) = text.parse::<i128>() {
        if let Ok(i) = i64::try_from(v * sign) {
            return Ok(Const::Int(i));
        }
    }
    match shown.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Const::Float(f)),
        _ => Err(out_of_range()),
    }
}

/// How a token reads in "found ..." messages.
fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) if is_keyword(w) => format!("keyword {}", w.to_uppercase()),
        Tok::Word(w) => format!("name '{}'", shorten(w)),
        Tok::Bracketed(w) => format!("name [[{}]]", shorten(w)),
        Tok::Number(n) => format!("number {}", shorten(n)),
        Tok::Str(s) => format!("string '{}'", shorten(s)),
        Tok::Dot => "'.'".into(),
        Tok::Comma => "','".into(),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::Plus => "'+'".into(),
        Tok::Minus => "'-'".into(),
        Tok::Star => "'*'".into(),
        Tok::Slash => "'/'".into(),
        Tok::Percent => "'%'".into(),
        Tok::Eq => "'='".into(),
        Tok::Ne => "'!='".into(),
        Tok::Lt => "'<'".into(),
        Tok::Le => "'<='".into(),
        Tok::Gt => "'>'".into(),
        Tok::Ge => "'>='".into(),
        Tok::End => "the end of the query".into(),
    }
}

/// Cuts long text for messages.
fn shorten(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}
