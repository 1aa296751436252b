//! A small typed HTML builder. Every value that is not a literal in this
//! crate's source goes through [`escape`] on its way in: markup can only
//! be added as `&'static str`, text and attribute values only as escaped
//! strings, so no page can carry a caller's bytes as markup.

use std::fmt::Write as _;

/// Escapes `text` for element content and double-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `/ui/...` path with its query parameters percent-encoded. Only paths
/// of this module's own pages are built, so no `javascript:` URL can arise.
pub fn url(path: &'static str, params: &[(&str, &str)]) -> String {
    let mut out = String::from(path);
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in params {
        if !v.is_empty() {
            query.append_pair(k, v);
            any = true;
        }
    }
    if any {
        out.push('?');
        out.push_str(&query.finish());
    }
    out
}

/// HTML under construction.
#[derive(Debug, Default)]
pub struct Html(String);

impl Html {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends literal markup written in this crate's source.
    pub fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Appends `text`, escaped.
    pub fn text(&mut self, text: &str) -> &mut Self {
        self.0.push_str(&escape(text));
        self
    }

    /// Opens `<tag a="v" …>` with every attribute value escaped; an
    /// attribute whose value is `None` is left out, `Some("")` is written
    /// bare (`required`, `checked`).
    pub fn open(&mut self, tag: &'static str, attrs: &[(&'static str, Option<&str>)]) -> &mut Self {
        self.0.push('<');
        self.0.push_str(tag);
        for (name, value) in attrs {
            match value {
                None => {}
                Some("") => {
                    let _ = write!(self.0, " {name}");
                }
                Some(v) => {
                    let _ = write!(self.0, " {name}=\"{}\"", escape(v));
                }
            }
        }
        self.0.push('>');
        self
    }

    /// Closes `</tag>`.
    pub fn close(&mut self, tag: &'static str) -> &mut Self {
        let _ = write!(self.0, "</{tag}>");
        self
    }

    /// `<tag attrs>text</tag>`.
    pub fn elem(
        &mut self,
        tag: &'static str,
        attrs: &[(&'static str, Option<&str>)],
        text: &str,
    ) -> &mut Self {
        self.open(tag, attrs).text(text).close(tag)
    }

    /// `<a href="href">text</a>`.
    pub fn link(&mut self, href: &str, text: &str) -> &mut Self {
        self.elem("a", &[("href", Some(href))], text)
    }

    /// A table: `headers`, then one row per item, each cell built by `row`.
    pub fn table<T>(
        &mut self,
        id: &'static str,
        headers: &[&'static str],
        items: &[T],
        mut row: impl FnMut(&mut Html, &T),
    ) -> &mut Self {
        self.open("table", &[("id", Some(id))]).raw("<thead><tr>");
        for h in headers {
            self.elem("th", &[], h);
        }
        self.raw("</tr></thead><tbody>");
        for item in items {
            self.raw("<tr>");
            row(self, item);
            self.raw("</tr>");
        }
        if items.is_empty() {
            self.raw("<tr><td class=\"empty\" colspan=\"99\">nothing to show</td></tr>");
        }
        self.raw("</tbody></table>")
    }

    /// `<td>text</td>`.
    pub fn cell(&mut self, text: &str) -> &mut Self {
        self.elem("td", &[], text)
    }

    /// A hidden form field.
    pub fn hidden(&mut self, name: &'static str, value: &str) -> &mut Self {
        self.open(
            "input",
            &[
                ("type", Some("hidden")),
                ("name", Some(name)),
                ("value", Some(value)),
            ],
        )
    }

    /// Appends another fragment.
    pub fn append(&mut self, other: Html) -> &mut Self {
        self.0.push_str(&other.0);
        self
    }

    /// The finished markup.
    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_everywhere() {
        let evil = "<script>alert('x')</script>\"&";
        let mut h = Html::new();
        h.elem("p", &[("title", Some(evil))], evil).link(evil, evil);
        let out = h.into_string();
        assert!(!out.contains("<script>"), "{out}");
        assert!(!out.contains("\"&\""), "{out}");
        assert_eq!(
            escape(evil),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"
        );
    }

    #[test]
    fn urls_percent_encode_their_parameters() {
        assert_eq!(
            url(
                "/ui/identity",
                &[("env", "dev"), ("name", "a/b c&d"), ("x", "")]
            ),
            "/ui/identity?env=dev&name=a%2Fb+c%26d"
        );
        assert_eq!(url("/ui/keys", &[]), "/ui/keys");
    }
}
