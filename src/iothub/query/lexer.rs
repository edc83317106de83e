//! The lexer: query text to tokens, each with the 1-based character column it starts at.
//!
//! Keywords are not told apart from names here: the parser matches words against the
//! keyword list case-insensitively, so that its error messages can say "keyword GROUP"
//! where a name was expected. Numbers keep their source text; the parser turns them
//! into values (it folds a leading `-` into the literal, which is how `-9223372036854775808`
//! fits an `i64`).

use super::QueryError;

/// What a token is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// A plain word: a keyword, a function name or a property name, as written.
    Word(String),
    /// `[[any name]]`: the raw name between the brackets.
    Bracketed(String),
    /// A numeric literal, as written (`12`, `1.5e3`, `0x1F`).
    Number(String),
    /// A string literal, unescaped.
    Str(String),
    Dot,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// End of input.
    End,
}

/// One token with where it starts (1-based character column and byte offset) and where
/// it ends (byte offset just past it).
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub tok: Tok,
    pub col: usize,
    pub start: usize,
    pub end: usize,
}

/// Splits `text` into tokens; the last one is always [`Tok::End`].
pub(crate) fn lex(text: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    while i < chars.len() {
        let c = chars[i].1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let next = chars.get(i + 1).map(|&(_, c)| c);
        let tok = match c {
            '.' => {
                i += 1;
                Tok::Dot
            }
            ',' => {
                i += 1;
                Tok::Comma
            }
            '(' => {
                i += 1;
                Tok::LParen
            }
            ')' => {
                i += 1;
                Tok::RParen
            }
            ']' => {
                i += 1;
                Tok::RBracket
            }
            '+' => {
                i += 1;
                Tok::Plus
            }
            '-' => {
                i += 1;
                Tok::Minus
            }
            '*' => {
                i += 1;
                Tok::Star
            }
            '/' => {
                i += 1;
                Tok::Slash
            }
            '%' => {
                i += 1;
                Tok::Percent
            }
            '=' => {
                i += 1;
                Tok::Eq
            }
            '!' if next == Some('=') => {
                i += 2;
                Tok::Ne
            }
            '<' => match next {
                Some('=') => {
                    i += 2;
                    Tok::Le
                }
                Some('>') => {
                    i += 2;
                    Tok::Ne
                }
                _ => {
                    i += 1;
                    Tok::Lt
                }
            },
            '>' => {
                if next == Some('=') {
                    i += 2;
                    Tok::Ge
                } else {
                    i += 1;
                    Tok::Gt
                }
            }
            '[' if next == Some('[') => {
                let (name, after) = bracketed(&chars, i)?;
                i = after;
                Tok::Bracketed(name)
            }
            '[' => {
                i += 1;
                Tok::LBracket
            }
            '\'' | '"' => {
                let (s, after) = string(&chars, i)?;
                i = after;
                Tok::Str(s)
            }
            c if c.is_ascii_digit() => {
                let after = number_end(&chars, i)?;
                let s: String = chars[i..after].iter().map(|&(_, c)| c).collect();
                i = after;
                Tok::Number(s)
            }
            c if is_word_start(c) => {
                let mut j = i + 1;
                while j < chars.len() && is_word_char(chars[j].1) {
                    j += 1;
                }
                let s: String = chars[i..j].iter().map(|&(_, c)| c).collect();
                i = j;
                Tok::Word(s)
            }
            other => {
                return Err(QueryError {
                    column: i + 1,
                    message: format!("unexpected character {}", describe_char(other)),
                });
            }
        };
        toks.push(Token {
            tok,
            col: start + 1,
            start: byte_at(start),
            end: byte_at(i),
        });
    }
    toks.push(Token {
        tok: Tok::End,
        col: chars.len() + 1,
        start: text.len(),
        end: text.len(),
    });
    Ok(toks)
}

/// True for a character that may start a plain property name or keyword.
pub(crate) fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

/// True for a character that may continue a plain property name or keyword.
pub(crate) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

fn describe_char(c: char) -> String {
    if c.is_control() {
        format!("U+{:04X}", c as u32)
    } else {
        format!("'{c}'")
    }
}

/// `[[name]]` starting at `i`: the name and the index just past `]]`.
fn bracketed(chars: &[(usize, char)], i: usize) -> Result<(String, usize), QueryError> {
    let mut j = i + 2;
    let mut name = String::new();
    while j < chars.len() {
        if chars[j].1 == ']' && chars.get(j + 1).map(|&(_, c)| c) == Some(']') {
            if name.is_empty() {
                return Err(QueryError {
                    column: i + 1,
                    message: "expected a property name between '[[' and ']]', found nothing".into(),
                });
            }
            if name.contains('.') {
                return Err(QueryError {
                    column: i + 1,
                    message: format!(
                        "a property name cannot contain '.', found [[{name}]]: write each name in its own brackets, like [[a]].[[b]]"
                    ),
                });
            }
            return Ok((name, j + 2));
        }
        name.push(chars[j].1);
        j += 1;
    }
    Err(QueryError {
        column: i + 1,
        message: "expected ']]' to close the '[[' started here, found the end of the query".into(),
    })
}

/// A quoted string starting at `i`: the unescaped text and the index past the closing quote.
fn string(chars: &[(usize, char)], i: usize) -> Result<(String, usize), QueryError> {
    let quote = chars[i].1;
    let mut s = String::new();
    let mut j = i + 1;
    while j < chars.len() {
        let c = chars[j].1;
        if c == quote {
            return Ok((s, j + 1));
        }
        if c != '\\' {
            s.push(c);
            j += 1;
            continue;
        }
        let esc_col = j + 1;
        let bad = move |what: String| QueryError {
            column: esc_col,
            message: format!(
                "invalid escape {what} in a string (valid: \\' \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)"
            ),
        };
        let Some(&(_, e)) = chars.get(j + 1) else {
            break;
        };
        j += 2;
        match e {
            '\'' | '"' | '\\' | '/' => s.push(e),
            'b' => s.push('\u{8}'),
            'f' => s.push('\u{c}'),
            'n' => s.push('\n'),
            'r' => s.push('\r'),
            't' => s.push('\t'),
            'u' => {
                let at = j - 2;
                let hi =
                    hex4(chars, j).ok_or_else(|| bad("'\\u' (expected 4 hex digits)".into()))?;
                j += 4;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    // A UTF-16 high surrogate must be followed by `\u` and a low one.
                    let low = if chars.get(j).map(|c| c.1) == Some('\\')
                        && chars.get(j + 1).map(|c| c.1) == Some('u')
                    {
                        hex4(chars, j + 2).filter(|l| (0xDC00..0xE000).contains(l))
                    } else {
                        None
                    };
                    let Some(low) = low else {
                        return Err(QueryError {
                            column: at + 1,
                            message: format!(
                                "invalid escape \\u{hi:04X} in a string: a high surrogate must be followed by a low surrogate \\uDC00-\\uDFFF"
                            ),
                        });
                    };
                    j += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    hi
                };
                match char::from_u32(code) {
                    Some(c) => s.push(c),
                    None => {
                        return Err(QueryError {
                            column: at + 1,
                            message: format!(
                                "invalid escape \\u{code:04X} in a string: a lone low surrogate is not a character"
                            ),
                        });
                    }
                }
            }
            other => return Err(bad(format!("'\\{other}'"))),
        }
    }
    Err(QueryError {
        column: i + 1,
        message: format!(
            "unterminated string: expected a closing {quote} for the string started here"
        ),
    })
}

fn hex4(chars: &[(usize, char)], j: usize) -> Option<u32> {
    let mut v = 0u32;
    for k in 0..4 {
        let d = chars.get(j + k)?.1.to_digit(16)?;
        v = v * 16 + d;
    }
    Some(v)
}

/// The index just past a number starting at `i` (a digit). Checks the shape only; the
/// parser converts the text.
fn number_end(chars: &[(usize, char)], i: usize) -> Result<usize, QueryError> {
    let at = |j: usize| chars.get(j).map(|&(_, c)| c);
    let mut j = i;
    let invalid = |end: usize| {
        let mut e = end;
        while e < chars.len() && (is_word_char(chars[e].1) || chars[e].1 == '.') {
            e += 1;
        }
        let s: String = chars[i..e.max(end)].iter().map(|&(_, c)| c).collect();
        QueryError {
            column: i + 1,
            message: format!(
                "invalid number '{s}' (expected digits like 12, -3, 1.5, 2e10 or hex like 0x1F)"
            ),
        }
    };
    if at(j) == Some('0') && matches!(at(j + 1), Some('x' | 'X')) {
        j += 2;
        let digits = j;
        while at(j).is_some_and(|c| c.is_ascii_hexdigit()) {
            j += 1;
        }
        if j == digits || at(j).is_some_and(|c| is_word_char(c) || c == '.') {
            return Err(invalid(j));
        }
        return Ok(j);
    }
    while at(j).is_some_and(|c| c.is_ascii_digit()) {
        j += 1;
    }
    if at(j) == Some('.') {
        j += 1;
        if !at(j).is_some_and(|c| c.is_ascii_digit()) {
            return Err(invalid(j));
        }
        while at(j).is_some_and(|c| c.is_ascii_digit()) {
            j += 1;
        }
    }
    if matches!(at(j), Some('e' | 'E')) {
        j += 1;
        if matches!(at(j), Some('+' | '-')) {
            j += 1;
        }
        if !at(j).is_some_and(|c| c.is_ascii_digit()) {
            return Err(invalid(j));
        }
        while at(j).is_some_and(|c| c.is_ascii_digit()) {
            j += 1;
        }
    }
    if at(j).is_some_and(|c| is_word_char(c) || c == '.') {
        return Err(invalid(j));
    }
    Ok(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn lexes_operators_names_and_literals() {
        assert_eq!(
            toks("tags.[[my-config]] <> 'a\\'b' AND x>=0x1F"),
            vec![
                Tok::Word("tags".into()),
                Tok::Dot,
                Tok::Bracketed("my-config".into()),
                Tok::Ne,
                Tok::Str("a'b".into()),
                Tok::Word("AND".into()),
                Tok::Word("x".into()),
                Tok::Ge,
                Tok::Number("0x1F".into()),
                Tok::End,
            ]
        );
        assert_eq!(
            toks("\"\\u00e9\\uD83D\\uDE00\\n\""),
            vec![Tok::Str("é😀\n".into()), Tok::End]
        );
        assert_eq!(
            toks("1.5e-3 != 2"),
            vec![
                Tok::Number("1.5e-3".into()),
                Tok::Ne,
                Tok::Number("2".into()),
                Tok::End
            ]
        );
    }

    #[test]
    fn columns_count_characters() {
        let t = lex("é = 'x'").unwrap();
        assert_eq!(
            t.iter().map(|t| t.col).collect::<Vec<_>>(),
            vec![1, 3, 5, 8]
        );
        assert_eq!((t[2].start, t[2].end), (5, 8));
    }

    #[test]
    fn lexer_errors_name_the_problem() {
        let e = lex("tags.a = 'abc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "column 10: unterminated string: expected a closing ' for the string started here"
        );
        let e = lex("x = 'a\\qb'").unwrap_err();
        assert_eq!(e.column, 7);
        assert!(e.message.contains("invalid escape '\\q'"), "{e}");
        let e = lex("x = 1.").unwrap_err();
        assert_eq!(
            e.to_string(),
            "column 5: invalid number '1.' (expected digits like 12, -3, 1.5, 2e10 or hex like 0x1F)"
        );
        assert!(lex("x = 12ab").unwrap_err().message.contains("'12ab'"));
        assert_eq!(lex("x = 0x").unwrap_err().column, 5);
        assert_eq!(
            lex("x # 1").unwrap_err().to_string(),
            "column 3: unexpected character '#'"
        );
        assert_eq!(lex("tags.[[abc").unwrap_err().column, 6);
        assert!(
            lex("tags.[[]]")
                .unwrap_err()
                .message
                .contains("found nothing")
        );
        assert!(
            lex("tags.[[a.b]]")
                .unwrap_err()
                .message
                .contains("cannot contain '.'")
        );
        assert!(lex("'\\uD800'").unwrap_err().message.contains("surrogate"));
        assert!(lex("'\\uDC00'").unwrap_err().message.contains("surrogate"));
        assert!(lex("'\\u12'").unwrap_err().message.contains("4 hex digits"));
        assert!(lex("'abc\\").unwrap_err().message.contains("unterminated"));
    }
}
