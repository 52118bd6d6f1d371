//! Reserved names of the CIM protocol (docs/protocol.md section 5) as constants.

/// Request keys (`SentBody.key`) with a meaning fixed by the protocol.
pub mod key {
    /// Bind this connection to an account; data keys in [`super::bind`].
    pub const CLIENT_BIND: &str = "client_bind";
    /// Synthesised by the server when a connection drops, so handlers see disconnects.
    pub const CLIENT_CLOSED: &str = "client_closed";
    /// A message sent by the client over its connection; data keys in [`super::send`].
    pub const CLIENT_MESSAGE: &str = "client_message";
    /// Join a tag (group); data key `tag`.
    pub const CLIENT_SET_TAG: &str = "client_set_tag";
    /// Leave a tag; data key `tag`.
    pub const CLIENT_REMOVE_TAG: &str = "client_remove_tag";
    /// Ask for stored (offline) messages.
    pub const CLIENT_GET_OFFLINE_MESSAGE: &str = "client_get_offline_message";
    /// Acknowledge a message, and every older one, by its id: data key `id` (the receipts
    /// extension; see [`super::bind::CLIENT_ACK`]).
    pub const CLIENT_ACK: &str = "client_ack";
    /// Reply key of a refused WebSocket handshake.
    pub const CLIENT_HANDSHAKE: &str = "client_handshake";
}

/// Data keys of a `client_bind` request.
pub mod bind {
    /// The account to bind (required).
    pub const UID: &str = "uid";
    /// Terminal type; see [`super::channel`].
    pub const CHANNEL: &str = "channel";
    /// A stable id of the device.
    pub const DEVICE_ID: &str = "deviceId";
    /// A human-readable device name; sent to the kicked device.
    pub const DEVICE_NAME: &str = "deviceName";
    /// Application version.
    pub const APP_VERSION: &str = "appVersion";
    /// Operating system version.
    pub const OS_VERSION: &str = "osVersion";
    /// Language tag.
    pub const LANGUAGE: &str = "language";
    /// Authentication token (optional).
    pub const TOKEN: &str = "token";
    /// Application package name (optional).
    pub const PACKAGE_NAME: &str = "packageName";
    /// Client instance id (optional).
    pub const CLIENT_ID: &str = "clientId";
    /// `"true"` (or `"1"`) when the client supports receipts: it acknowledges each message with
    /// [`super::key::CLIENT_ACK`], and in return messages stay stored until acknowledged and
    /// are re-sent after a reconnect.
    pub const CLIENT_ACK: &str = "clientAck";
    /// Legacy (CIM 2.x) name of [`UID`].
    pub const LEGACY_ACCOUNT: &str = "account";
    /// Legacy (CIM 2.x) name of [`DEVICE_NAME`].
    pub const LEGACY_DEVICE: &str = "device";
    /// Legacy (CIM 2.x) name of [`APP_VERSION`].
    pub const LEGACY_VERSION: &str = "version";
}

/// Data keys of a `client_message` request and of its reply.
pub mod send {
    /// Receiving account.
    pub const RECEIVER: &str = "receiver";
    /// Message action.
    pub const ACTION: &str = "action";
    /// Message content.
    pub const CONTENT: &str = "content";
    /// Message format.
    pub const FORMAT: &str = "format";
    /// Message title.
    pub const TITLE: &str = "title";
    /// Message extra field.
    pub const EXTRA: &str = "extra";
    /// The message's attachment (see [`crate::Message::file`]).
    pub const FILE: &str = "file";
    /// The attachment's type (see [`crate::Message::file_type`]).
    pub const FILE_TYPE: &str = "fileType";
    /// Client's correlation id, echoed in the reply.
    pub const REQUEST_ID: &str = "requestId";
    /// The id the server gave the message, in the reply.
    pub const MESSAGE_ID: &str = "messageId";
}

/// Message actions with a meaning fixed by the protocol.
pub mod action {
    /// The account bound on another device; content is that device's name. Stock SDKs stop
    /// reconnecting on it.
    pub const KICK: &str = "999";
    /// Sender of a kick notice.
    pub const KICK_SENDER: &str = "0";
}

/// Reply codes (strings on the wire).
pub mod code {
    /// Success.
    pub const OK: &str = "200";
    /// Bad request: a required data key is missing or invalid.
    pub const BAD_REQUEST: &str = "400";
    /// Authentication failed.
    pub const UNAUTHORIZED: &str = "401";
    /// Not allowed.
    pub const FORBIDDEN: &str = "403";
    /// No handler for the request key.
    pub const NOT_FOUND: &str = "404";
    /// A message larger than the server's connections can be sent.
    pub const TOO_LARGE: &str = "413";
    /// The server failed.
    pub const SERVER_ERROR: &str = "500";
    /// The server cannot take the request now (overloaded, store unavailable).
    pub const UNAVAILABLE: &str = "503";
}

/// Terminal types (`channel` of a bind).
pub mod channel {
    /// Android app.
    pub const ANDROID: &str = "android";
    /// iOS app.
    pub const IOS: &str = "ios";
    /// Windows desktop.
    pub const WINDOWS: &str = "windows";
    /// macOS desktop.
    pub const MAC: &str = "mac";
    /// Browser.
    pub const WEB: &str = "web";
    /// uni-app in a browser.
    pub const UNI_H5: &str = "uni-h5";
    /// uni-app on Android.
    pub const UNI_ANDROID: &str = "uni-android";
    /// uni-app on iOS.
    pub const UNI_IOS: &str = "uni-ios";
    /// Generic app.
    pub const APP: &str = "app";
    /// The .NET SDK.
    pub const DOTNET: &str = "DotNet";
}
