//! ComfyUI's HTTP and websocket API, as a worker calls it: upload an input image, queue a
//! workflow, read its `/history` entry, fetch an output file, interrupt, forget a prompt, and
//! watch a client's websocket for progress.
//!
//! The calls are async and run on the caller's runtime; what the answers mean is read by
//! [`super::api`].

use super::api::{read_history, read_submit, Finished, Produced, Submitted};
use super::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A client of one ComfyUI (`http://127.0.0.1:PORT`).
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base_url: impl Into<String>) -> Result<Client> {
        // No idle connections kept: after ComfyUI restarts, a pooled one would still lead to
        // the dead process (and reuse saves nothing on loopback).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(Error::Client)?;
        Ok(Client {
            base: base_url.into(),
            http,
        })
    }

    /// `POST /upload/image` into the input folder's `subfolder`; the name ComfyUI gave it.
    pub async fn upload_image(&self, subfolder: &str, name: &str, bytes: &[u8]) -> Result<String> {
        let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string());
        let form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("overwrite", "true")
            .text("type", "input")
            .text("subfolder", subfolder.to_string());
        let resp = self
            .http
            .post(format!("{}/upload/image", self.base))
            .multipart(form)
            .send()
            .await?;
        let v = resp.error_for_status()?.json::<Value>().await?;
        Ok(v.get("name")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_string())
    }

    /// `POST /prompt`: queue `workflow` for the websocket `client_id`, with the Comfy.org API
    /// key its API nodes need, if any.
    pub async fn submit(
        &self,
        workflow: &Map<String, Value>,
        client_id: &str,
        comfy_org_api_key: Option<&str>,
    ) -> Result<Submitted> {
        let mut body = json!({ "prompt": workflow, "client_id": client_id });
        if let Some(k) = comfy_org_api_key {
            body["extra_data"] = json!({ "api_key_comfy_org": k });
        }
        let resp = self
            .http
            .post(format!("{}/prompt", self.base))
            .json(&body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok(read_submit(status, &v))
    }

    /// `GET /history/{prompt_id}`, answered within `limit` (a hung ComfyUI accepts and never
    /// answers).
    pub async fn history(&self, prompt_id: &str, limit: Duration) -> Result<Finished> {
        let h = self
            .http
            .get(format!("{}/history/{prompt_id}", self.base))
            .timeout(limit)
            .send()
            .await?
            .json::<Value>()
            .await?;
        Ok(read_history(&h, prompt_id))
    }

    /// `GET /view`: the bytes of one file `/history` listed.
    pub async fn view(&self, f: &Produced) -> Result<bytes::Bytes> {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("filename", &f.filename)
            .append_pair("subfolder", &f.subfolder)
            .append_pair("type", &f.kind)
            .finish();
        let bytes = self
            .http
            .get(format!("{}/view?{query}", self.base))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        Ok(bytes)
    }

    /// `POST /interrupt`: stop `prompt_id` if it runs, or whatever runs when `None`.
    pub async fn interrupt(&self, prompt_id: Option<&str>) -> Result<()> {
        let body = match prompt_id {
            Some(id) => json!({ "prompt_id": id }),
            None => json!({}),
        };
        self.http
            .post(format!("{}/interrupt", self.base))
            .json(&body)
            .send()
            .await?;
        Ok(())
    }

    /// `POST /history` `{"delete": [prompt_id]}`: ComfyUI forgets the prompt.
    pub async fn forget(&self, prompt_id: &str) -> Result<()> {
        self.http
            .post(format!("{}/history", self.base))
            .json(&json!({ "delete": [prompt_id] }))
            .send()
            .await?;
        Ok(())
    }

    /// Open the websocket of a fresh client id and read it in a task of the current runtime,
    /// until the [`Watch`] is dropped. A socket that cannot be opened gives a watch that never
    /// hears anything: polling `/history` does it all.
    pub async fn watch(&self) -> Watch {
        let mut watch = Watch {
            client_id: client_id(),
            heard: Arc::default(),
            reported: Mutex::new(None),
            reader: None,
        };
        let url = format!(
            "{}/ws?clientId={}",
            self.base.replacen("http://", "ws://", 1),
            watch.client_id
        );
        let connect = tokio_tungstenite::connect_async(url);
        let (ws, _) = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(c)) => c,
            other => {
                tracing::debug!("websocket not used: {:?}", other.err().map(|_| "timeout"));
                return watch;
            }
        };
        tracing::debug!("websocket {} connected", watch.client_id);
        watch.reader = Some(tokio::spawn(read_socket(ws, watch.heard.clone())));
        watch
    }
}

/// What a client's websocket said: the latest progress event, and a signal when ComfyUI says
/// a prompt is done (`executing` with no node). Its reader stops when this is dropped.
pub struct Watch {
    client_id: String,
    heard: Arc<Heard>,
    /// The progress last handed to the caller, so each event is reported once.
    reported: Mutex<Option<Value>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

/// Shared between a [`Watch`] and its reader task.
#[derive(Default)]
struct Heard {
    latest: Mutex<Option<Value>>,
    done: tokio::sync::Notify,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Read the socket until it closes, keeping the latest progress and signalling "done".
async fn read_socket(mut ws: Socket, heard: Arc<Heard>) {
    use futures_util::StreamExt;
    while let Some(Ok(msg)) = ws.next().await {
        let Ok(text) = msg.to_text() else { continue };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        match v["type"].as_str() {
            Some("progress") => {
                if let Ok(mut l) = heard.latest.lock() {
                    *l = Some(v["data"].clone());
                }
            }
            Some("executing") if v["data"]["node"].is_null() => heard.done.notify_one(),
            _ => {}
        }
    }
    tracing::debug!("websocket closed");
}

impl Watch {
    /// The client id to submit prompts under, so their events come to this socket.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The newest progress event of `prompt_id` not reported yet, as
    /// `{"node", "value", "max"}`.
    pub fn progress_of(&self, prompt_id: &str) -> Option<Value> {
        let latest = self.heard.latest.lock().ok()?.clone()?;
        if latest["prompt_id"].as_str() != Some(prompt_id) {
            return None;
        }
        let mut reported = self.reported.lock().ok()?;
        if reported.as_ref() == Some(&latest) {
            return None;
        }
        *reported = Some(latest.clone());
        Some(json!({
            "node": latest["node"],
            "value": latest["value"],
            "max": latest["max"],
        }))
    }

    /// Return when ComfyUI says a prompt is done, or after `wait`, whichever is first.
    pub async fn done_or(&self, wait: Duration) {
        tokio::select! {
            _ = self.heard.done.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(r) = &self.reader {
            r.abort();
        }
    }
}

/// A fresh websocket client id, `comfystore-<random>`.
fn client_id() -> String {
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    format!("comfystore-{}", hex::encode(r))
}
