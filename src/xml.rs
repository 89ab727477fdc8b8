//! The XML WeChat pushes: `<xml>` with one level of fields, read with DOCTYPE and entities refused.

use quick_xml::events::Event;
use quick_xml::Reader;

/// Bigger than any push WeChat documents, small enough that a hostile body cannot make the
/// parser hold much.
const MAX_FIELDS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("XML is malformed")]
    Malformed,
    #[error("XML declares a DOCTYPE or processing instruction, which WeChat never sends")]
    Forbidden,
    #[error("the root element is not <xml>")]
    Root,
    #[error("XML has more than {MAX_FIELDS} fields")]
    TooManyFields,
}

/// The top-level fields of an `<xml>` document, in order. Nested elements (WeChat's
/// `notify_third_fasteregister` has an `<info>` block) are kept as the empty string: the raw
/// document is stored alongside for whoever needs them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub fn parse(xml: &str) -> Result<Fields, XmlError> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut fields = Vec::new();
    let mut depth = 0usize;
    let mut saw_root = false;
    loop {
        match reader.read_event().map_err(|_| XmlError::Malformed)? {
            Event::DocType(_) | Event::PI(_) => return Err(XmlError::Forbidden),
            Event::Start(e) => {
                depth += 1;
                if depth == 1 {
                    if e.name().as_ref() != b"xml" || saw_root {
                        return Err(XmlError::Root);
                    }
                    saw_root = true;
                } else if depth == 2 {
                    if fields.len() == MAX_FIELDS {
                        return Err(XmlError::TooManyFields);
                    }
                    fields.push((element_name(e.name().as_ref())?, String::new()));
                }
            }
            Event::Empty(e) => {
                if depth == 0 {
                    return Err(XmlError::Root);
                }
                if depth == 1 {
                    fields.push((element_name(e.name().as_ref())?, String::new()));
                }
            }
            Event::End(_) => depth = depth.checked_sub(1).ok_or(XmlError::Malformed)?,
            Event::Text(t) if depth == 2 => {
                let text = t.unescape().map_err(|_| XmlError::Malformed)?;
                push_text(&mut fields, &text);
            }
            Event::CData(c) if depth == 2 => {
                let text = std::str::from_utf8(&c).map_err(|_| XmlError::Malformed)?;
                push_text(&mut fields, text);
            }
            Event::Text(_) | Event::CData(_) if depth == 0 => return Err(XmlError::Malformed),
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root || depth != 0 {
        return Err(XmlError::Malformed);
    }
    Ok(Fields(fields))
}

fn element_name(raw: &[u8]) -> Result<String, XmlError> {
    std::str::from_utf8(raw).map(str::to_owned).map_err(|_| XmlError::Malformed)
}

fn push_text(fields: &mut [(String, String)], text: &str) {
    if let Some((_, value)) = fields.last_mut() {
        value.push_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cdata_and_text_fields() {
        let f = parse("<xml><AppId><![CDATA[wx0123456789abcdef]]></AppId>\n<CreateTime>1413192605</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><Empty/></xml>").unwrap();
        assert_eq!(f.get("AppId"), Some("wx0123456789abcdef"));
        assert_eq!(f.get("CreateTime"), Some("1413192605"));
        assert_eq!(f.get("Empty"), Some(""));
        assert_eq!(f.get("Missing"), None);
    }

    #[test]
    fn nested_blocks_do_not_leak_into_fields() {
        let f = parse("<xml><appid>wx1</appid><info><name>n</name></info><status>0</status></xml>").unwrap();
        assert_eq!(f.get("info"), Some(""));
        assert_eq!(f.get("status"), Some("0"));
        assert_eq!(f.get("name"), None);
    }

    #[test]
    fn refuses_hostile_or_broken_documents() {
        let xxe =
            r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><A>&x;</A></xml>"#;
        assert_eq!(parse(xxe), Err(XmlError::Forbidden));
        assert_eq!(parse("<xml><A>&x;</A></xml>"), Err(XmlError::Malformed));
        assert_eq!(parse("<root><A>1</A></root>"), Err(XmlError::Root));
        assert_eq!(parse("<xml><A>1</A></xml><xml/>"), Err(XmlError::Root));
        assert_eq!(parse("<xml><A>1</xml>"), Err(XmlError::Malformed));
        assert_eq!(parse(""), Err(XmlError::Malformed));
        assert_eq!(parse("not xml"), Err(XmlError::Malformed));
        let many: String = (0..65).map(|i| format!("<F{i}>v</F{i}>")).collect();
        assert_eq!(parse(&format!("<xml>{many}</xml>")), Err(XmlError::TooManyFields));
    }
}
