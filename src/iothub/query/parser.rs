//! The parser: tokens to a syntax tree, with errors that say what was expected and found.
//!
//! Statements by recursive descent; expressions by operator precedence with explicit
//! stacks (so nesting costs heap, not stack). The grammar, loosest binding first, as SQL
//! binds:
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
//! Comparisons do not chain (`a = b = c` is an error asking for parentheses). The parser
//! itself does not recurse. Two things are capped at [`MAX_DEPTH`]: the written nesting
//! (open parentheses, calls, `NOT` and unary `-`) and the depth of the resulting tree,
//! so no input can exhaust the stack in a later walk of the tree (evaluating, printing,
//! dropping).

use super::ast::prec;
use super::ast::{
    AddOp, AggFunc, CmpOp, Const, Expr, Func, MulOp, Path, Projection, Select, SelectItem,
    is_keyword,
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
    let e = p.expr()?;
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
        let what = if items.is_none() {
            "FROM after '*'"
        } else {
            "',' or FROM after the selected item"
        };
        return Err(p.expected(what, false));
    }
    p.bump();
    p.from()?;
    let mut filter = None;
    let mut span = None;
    if p.is_kw(0, "WHERE") {
        p.bump();
        let start = p.tok(0).start;
        filter = Some(p.expr()?);
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
    Ok(Parsed {
        select: Select {
            top,
            items,
            filter,
            group_by,
        },
        where_span: span,
        item_cols,
    })
}

struct Parser<'t> {
    text: &'t str,
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl<'t> Parser<'t> {
    fn new(text: &'t str) -> Result<Parser<'t>> {
        Ok(Parser {
            text,
            toks: lex(text)?,
            pos: 0,
            depth: 0,
        })
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
        QueryError {
            column: self.tok(0).col,
            message,
        }
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
            && !["AND", "OR", "NOT", "IN", "NIN"]
                .iter()
                .any(|k| k.eq_ignore_ascii_case(w))
        {
            e.message
                .push_str(&format!(" (to use it as a property name, write [[{w}]])"));
        }
        e
    }

    /// Counts one level of recursion (an expression, or a function's arguments).
    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.too_deep());
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
                        return Err(
                            self.expected("')' after 'COUNT(' (COUNT takes no argument)", false)
                        );
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
            _ => {
                Projection::Path(self.path_expecting("*, a property path or COUNT() after SELECT")?)
            }
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

    /// One expression, by operator precedence with explicit stacks: parentheses, calls,
    /// `NOT` and unary `-` push markers instead of recursing.
    fn expr(&mut self) -> Result<Expr> {
        self.enter()?;
        let mut ops: Vec<Op> = Vec::new();
        let mut vals = Vals::default();
        // Open parentheses and calls, NOTs and minus signs on `ops`: they count toward
        // MAX_DEPTH.
        let mut nest = 0;
        let mut want_operand = true;
        loop {
            if want_operand {
                let col = self.tok(0).col;
                let prefix = if self.is_kw(0, "NOT") {
                    // SQL reads `a = NOT b` as an error, not `a = (NOT b)`.
                    if !matches!(
                        ops.last(),
                        None | Some(Op::Paren(_) | Op::Call(..) | Op::Not | Op::And(_) | Op::Or(_))
                    ) {
                        return Err(self.expected("a value", true));
                    }
                    Op::Not
                } else if self.at(&Tok::LParen) {
                    Op::Paren(col)
                } else if let Tok::Word(w) = &self.tok(0).tok
                    && !is_keyword(w)
                    && self.tok(1).tok == Tok::LParen
                {
                    let Some(func) = Func::from_name(w) else {
                        return Err(QueryError {
                            column: col,
                            message: unknown_function(w),
                        });
                    };
                    self.bump();
                    if self.tok(1).tok == Tok::RParen {
                        // No arguments.
                        self.bump();
                        self.bump();
                        vals.push(call(func, Vec::new(), col)?, 1);
                        want_operand = false;
                        continue;
                    }
                    Op::Call(func, col, 0)
                } else if self.at(&Tok::Minus) {
                    if let Tok::Number(n) = &self.tok(1).tok {
                        let c = number(n, true).map_err(|m| self.error_here(m))?;
                        self.bump();
                        self.bump();
                        vals.push(Expr::Const(c), 1);
                        want_operand = false;
                        continue;
                    }
                    Op::Neg
                } else {
                    let e = self.primary()?;
                    vals.push(e, 1);
                    want_operand = false;
                    continue;
                };
                nest += 1;
                if self.depth + nest > MAX_DEPTH {
                    return Err(self.too_deep());
                }
                self.bump();
                ops.push(prefix);
                continue;
            }
            // Operator position.
            let (prec, op) = if self.is_kw(0, "OR") {
                (prec::OR, Op::Or(1))
            } else if self.is_kw(0, "AND") {
                (prec::AND, Op::And(1))
            } else if let Some(op) = self.cmp_op() {
                (prec::CMP, Op::Cmp(op))
            } else if let Some((negated, n)) = self.in_op() {
                (prec::CMP, Op::In(Vec::new(), negated, n))
            } else if let Some(op) = match self.tok(0).tok {
                Tok::Plus => Some(AddOp::Add),
                Tok::Minus => Some(AddOp::Sub),
                _ => None,
            } {
                (prec::SUM, Op::Sum(vec![op]))
            } else if let Some(op) = match self.tok(0).tok {
                Tok::Star => Some(MulOp::Mul),
                Tok::Slash => Some(MulOp::Div),
                Tok::Percent => Some(MulOp::Rem),
                _ => None,
            } {
                (prec::PRODUCT, Op::Product(vec![op]))
            } else if self.at(&Tok::RParen) || self.at(&Tok::Comma) {
                // Close the innermost parenthesis or call, or take the next argument.
                let Some(at) = ops
                    .iter()
                    .rposition(|o| matches!(o, Op::Paren(_) | Op::Call(..)))
                else {
                    break;
                };
                while ops.len() > at + 1 {
                    self.reduce(&mut ops, &mut vals, &mut nest)?;
                }
                match (&mut ops[at], self.at(&Tok::Comma)) {
                    (Op::Paren(_), true) => break,
                    (Op::Call(_, _, args), true) => {
                        *args += 1;
                        want_operand = true;
                    }
                    (Op::Paren(_), false) => {
                        ops.pop();
                        nest -= 1;
                    }
                    (Op::Call(func, col, args), false) => {
                        let (func, col, n) = (*func, *col, *args + 1);
                        ops.pop();
                        nest -= 1;
                        let (args, depth) = vals.take(n);
                        vals.push(call(func, args, col)?, depth + 1);
                        self.check_depth(depth + 1)?;
                    }
                    _ => unreachable!("rposition found a parenthesis or a call"),
                }
                self.bump();
                continue;
            } else {
                break;
            };
            while ops.last().is_some_and(|o| o.prec() > prec) {
                self.reduce(&mut ops, &mut vals, &mut nest)?;
            }
            match (ops.last_mut(), op) {
                (Some(Op::Cmp(_) | Op::In(..)), Op::Cmp(_) | Op::In(..)) => {
                    return Err(self.error_here(format!(
                        "comparisons cannot be chained: found {} after a comparison; add parentheses, \
                         like (a = b) = c",
                        describe(&self.tok(0).tok)
                    )));
                }
                (Some(Op::Or(n)), Op::Or(_)) | (Some(Op::And(n)), Op::And(_)) => {
                    *n += 1;
                    self.bump();
                }
                (Some(Op::Sum(list)), Op::Sum(new)) => {
                    list.extend(new);
                    self.bump();
                }
                (Some(Op::Product(list)), Op::Product(new)) => {
                    list.extend(new);
                    self.bump();
                }
                (_, Op::In(_, negated, n)) => {
                    for _ in 0..n {
                        self.bump();
                    }
                    if !self.at(&Tok::LBracket) {
                        return Err(self.expected("an array constant like ['a', 'b']", true));
                    }
                    ops.push(Op::In(self.array()?, negated, n));
                    continue;
                }
                (_, op) => {
                    self.bump();
                    ops.push(op);
                }
            }
            want_operand = true;
        }
        while let Some(op) = ops.last() {
            match op {
                Op::Paren(col) => {
                    return Err(
                        self.expected(&format!("')' to close the '(' at column {col}"), false)
                    );
                }
                Op::Call(func, ..) => {
                    return Err(self.expected(
                        &format!("',' or ')' in the arguments of {}", func.name()),
                        false,
                    ));
                }
                _ => self.reduce(&mut ops, &mut vals, &mut nest)?,
            }
        }
        self.leave();
        Ok(vals.exprs.pop().expect("an expression leaves one value"))
    }

    /// Pops the top operator and its operands, pushes the node they make.
    fn reduce(&self, ops: &mut Vec<Op>, vals: &mut Vals, nest: &mut usize) -> Result<()> {
        let op = ops.pop().expect("reduce() needs an operator");
        let (e, depth) = match op {
            Op::Paren(_) | Op::Call(..) => {
                unreachable!("parentheses and calls are closed, not reduced")
            }
            Op::Not | Op::Neg => {
                *nest -= 1;
                let (mut x, d) = vals.take(1);
                let x = Box::new(x.pop().expect("one operand"));
                (
                    if matches!(op, Op::Not) {
                        Expr::Not(x)
                    } else {
                        Expr::Neg(x)
                    },
                    d,
                )
            }
            Op::Or(n) => {
                let (xs, d) = vals.take(n + 1);
                (Expr::Or(xs), d)
            }
            Op::And(n) => {
                let (xs, d) = vals.take(n + 1);
                (Expr::And(xs), d)
            }
            Op::Cmp(c) => {
                let (mut two, d) = vals.take(2);
                let r = two.pop().expect("two operands");
                let l = two.pop().expect("two operands");
                (Expr::Compare(c, Box::new(l), Box::new(r)), d)
            }
            Op::In(list, negated, _) => {
                let (mut x, d) = vals.take(1);
                let x = Box::new(x.pop().expect("one operand"));
                (
                    Expr::In {
                        expr: x,
                        list,
                        negated,
                    },
                    d,
                )
            }
            Op::Sum(list) => {
                let (xs, d) = vals.take(list.len() + 1);
                let mut xs = xs.into_iter();
                let first = xs.next().expect("operands");
                (
                    Expr::Sum(Box::new(first), list.into_iter().zip(xs).collect()),
                    d,
                )
            }
            Op::Product(list) => {
                let (xs, d) = vals.take(list.len() + 1);
                let mut xs = xs.into_iter();
                let first = xs.next().expect("operands");
                (
                    Expr::Product(Box::new(first), list.into_iter().zip(xs).collect()),
                    d,
                )
            }
        };
        vals.push(e, depth + 1);
        self.check_depth(depth + 1)
    }

    /// Refuses a tree deeper than [`MAX_DEPTH`]: every later walk of it recurses.
    fn check_depth(&self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            Err(self.too_deep())
        } else {
            Ok(())
        }
    }

    #[cold]
    fn too_deep(&self) -> QueryError {
        self.error_here(format!(
            "the expression nests deeper than {MAX_DEPTH} levels (of parentheses, operators and function calls)"
        ))
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

    /// A constant, an array constant or a path.
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
            Tok::Word(w) if is_value_keyword(&w) => {
                self.bump();
                Ok(Expr::Const(value_keyword(&w)))
            }
            Tok::Word(w) if !is_keyword(&w) => Ok(Expr::Path(self.path()?)),
            Tok::Bracketed(_) => Ok(Expr::Path(self.path()?)),
            _ => Err(self.expected_name(
                if self.pos == 0 {
                    "a condition"
                } else {
                    "a value"
                },
                true,
            )),
        }
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
                Tok::Word(w)
                    if !negative
                        && is_value_keyword(&w)
                        && !w.eq_ignore_ascii_case("undefined") =>
                {
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

/// A pending operator on the parser's stack. n-ary operators collect their operators
/// as they come, so a chain becomes one node.
enum Op {
    /// An open parenthesis, with its column.
    Paren(usize),
    /// An open function call, with its column and how many arguments are complete.
    Call(Func, usize, usize),
    Not,
    Neg,
    /// With the number of `OR`s so far (operands: one more).
    Or(usize),
    And(usize),
    Cmp(CmpOp),
    /// The array, whether negated, and how many tokens the operator took.
    In(Vec<Const>, bool, usize),
    Sum(Vec<AddOp>),
    Product(Vec<MulOp>),
}

impl Op {
    fn prec(&self) -> u8 {
        match self {
            Op::Paren(_) | Op::Call(..) => 0,
            Op::Or(_) => prec::OR,
            Op::And(_) => prec::AND,
            Op::Not => prec::NOT,
            Op::Cmp(_) | Op::In(..) => prec::CMP,
            Op::Sum(_) => prec::SUM,
            Op::Product(_) => prec::PRODUCT,
            Op::Neg => prec::NEG,
        }
    }
}

/// The operand stack: finished subexpressions and how deep each is.
#[derive(Default)]
struct Vals {
    exprs: Vec<Expr>,
    depths: Vec<usize>,
}

impl Vals {
    fn push(&mut self, e: Expr, depth: usize) {
        self.exprs.push(e);
        self.depths.push(depth);
    }
    /// The top `n` operands, in order, and the greatest depth among them.
    fn take(&mut self, n: usize) -> (Vec<Expr>, usize) {
        let at = self.exprs.len() - n;
        let depth = self.depths.drain(at..).max().unwrap_or(0);
        (self.exprs.split_off(at), depth)
    }
}

/// A call node, once its arguments are known.
fn call(func: Func, args: Vec<Expr>, col: usize) -> Result<Expr> {
    if args.len() != func.arity() {
        let plural = if func.arity() == 1 {
            "argument"
        } else {
            "arguments"
        };
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

fn is_value_keyword(w: &str) -> bool {
    ["null", "undefined", "true", "false"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(w))
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
        return format!(
            "{}() is an aggregate: it is allowed only in the SELECT list",
            name.to_uppercase()
        );
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
    let shown = if negative {
        format!("-{text}")
    } else {
        text.to_string()
    };
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
    if is_int
        && let Ok(v) = text.parse::<i128>()
        && let Ok(i) = i64::try_from(v * sign)
    {
        return Ok(Const::Int(i));
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
