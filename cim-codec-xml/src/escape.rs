//! Writing XML text safely: entity and character references, CDATA splitting, name checks.

/// Whether `c` may appear literally in XML 1.0 text that we write. Everything else (control
/// characters, including the frame terminators `\x08` and `\0`, carriage returns, which parsers
/// would normalise away, and the non-characters U+FFFE/U+FFFF) is written as a character
/// reference.
fn literal_ok(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

/// Appends `s` as escaped character data.
pub(crate) fn push_text(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(at) = rest.find(|c: char| matches!(c, '<' | '>' | '&') || !literal_ok(c)) {
        let (plain, tail) = rest.split_at(at);
        out.push_str(plain);
        let mut chars = tail.chars();
        if let Some(c) = chars.next() {
            match c {
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '&' => out.push_str("&amp;"),
                c => {
                    use std::fmt::Write;
                    // Writing to a String cannot fail.
                    let _ = write!(out, "&#x{:X};", u32::from(c));
                }
            }
        }
        rest = chars.as_str();
    }
    out.push_str(rest);
}

/// Appends `s` as CDATA when every character may stand literally (splitting `]]>` across two
/// sections), and as escaped text otherwise.
pub(crate) fn push_cdata(out: &mut String, s: &str) {
    if s.is_empty() || !s.chars().all(literal_ok) {
        return push_text(out, s);
    }
    out.push_str("<![CDATA[");
    out.push_str(&s.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

fn name_start(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z' | '\u{c0}'..='\u{d6}' | '\u{d8}'..='\u{f6}'
        | '\u{f8}'..='\u{2ff}' | '\u{370}'..='\u{37d}' | '\u{37f}'..='\u{1fff}'
        | '\u{200c}'..='\u{200d}' | '\u{2070}'..='\u{218f}' | '\u{2c00}'..='\u{2fef}'
        | '\u{3001}'..='\u{d7ff}' | '\u{f900}'..='\u{fdcf}' | '\u{fdf0}'..='\u{fffd}'
        | '\u{10000}'..='\u{effff}')
}

fn name_char(c: char) -> bool {
    name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{b7}' | '\u{300}'..='\u{36f}' | '\u{203f}'..='\u{2040}')
}

/// Whether `s` is an XML name (without `:`, which would read as a namespace prefix).
pub(crate) fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c != ':' && name_start(c))
        && chars.all(|c| c != ':' && name_char(c))
}

/// Resolves the body of a reference `&...;`: the five predefined entities and character
/// references. `None` for anything else.
pub(crate) fn resolve_ref(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "quot" => '"',
        "apos" => '\'',
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escaping() {
        let mut s = String::new();
        push_text(&mut s, "a<b>&c\u{8}\r\u{0}é");
        assert_eq!(s, "a&lt;b&gt;&amp;c&#x8;&#xD;&#x0;é");
    }

    #[test]
    fn cdata_splits_terminator() {
        let mut s = String::new();
        push_cdata(&mut s, "x]]>y");
        assert_eq!(s, "<![CDATA[x]]]]><![CDATA[>y]]>");
        let mut s = String::new();
        push_cdata(&mut s, "bell\u{7}");
        assert_eq!(s, "bell&#x7;");
    }

    #[test]
    fn names() {
        for ok in ["uid", "_a", "a-b.c", "中文", "é1"] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a b", "-a", "a:b", "<", "a&"] {
            assert!(!is_name(bad), "{bad}");
        }
    }

    #[test]
    fn refs() {
        assert_eq!(resolve_ref("amp"), Some('&'));
        assert_eq!(resolve_ref("#x8"), Some('\u{8}'));
        assert_eq!(resolve_ref("#65"), Some('A'));
        assert_eq!(resolve_ref("#xD800"), None);
        assert_eq!(resolve_ref("nbsp"), None);
    }
}
