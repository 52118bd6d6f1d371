//! The XML codec passes the shared stream codec suite.
#![allow(missing_docs)]

use cim_codec_xml::XmlCodec;
use cim_core::testing::codec::stream_codec;
use cim_core::testing::{frame_with_keys, xml_name};

#[test]
fn xml_documents_conform() {
    stream_codec(
        || XmlCodec::with_max_document(1 << 20),
        || XmlCodec::with_max_document(64),
        || frame_with_keys(xml_name()),
    );
}
