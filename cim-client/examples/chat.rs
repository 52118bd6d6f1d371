//! A tiny chat client: binds an account, prints what arrives, and sends each line typed as
//! `receiver: text`.
//!
//! ```sh
//! cargo run --release -p cim-server                                  # terminal 1
//! cargo run -p cim-client --example chat -- alice                    # terminal 2
//! cargo run -p cim-client --example chat -- bob                      # terminal 3, then type: alice: hi
//! ```

use cim_client::{BindInfo, Client, ClientConfig, Event, text};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uid = std::env::args().nth(1).unwrap_or_else(|| "alice".into());
    let server = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "tcp://127.0.0.1:23456".into());
    let config = ClientConfig::new(server.parse()?, BindInfo::new(&uid));
    let (client, mut events) = Client::connect(config).await?;
    println!("bound as {uid}; type `receiver: text` to send");

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => {
                let Some(line) = line? else { break };
                match line.split_once(':') {
                    Some((to, body)) => {
                        let id = client.send_message(to.trim(), text(body.trim())).await?;
                        println!("(sent {id})");
                    }
                    None => println!("type `receiver: text`"),
                }
            }
            event = events.recv() => match event {
                Some(Event::Message(m)) => println!("{}: {}", m.sender, m.content),
                Some(Event::Kicked(_)) | None => break,
                Some(other) => println!("({other:?})"),
            },
        }
    }
    client.destroy().await;
    Ok(())
}
