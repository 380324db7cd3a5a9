// Chat page of the demo: starts the real Datadog RUM SDK, chats with the agent through the proxy (streamed),
// and shows the browser's RUM session next to the session_id of the agent's LLM Observability spans.
//
// URL options (the browser tests use them): rum=5|6|7, send=none|body|query, tracing=1|0,
// persistence=cookie|local-storage, stream=1|0, baggage=1 (propagateTraceBaggage: opt-in in v6, default in v7).
'use strict';

const params = new URLSearchParams(location.search);
const options = {
  rum: ['5', '6', '7'].includes(params.get('rum')) ? params.get('rum') : '7',
  send: params.get('send') || 'none',
  tracing: params.get('tracing') !== '0',
  persistence: params.get('persistence') || 'cookie',
  stream: params.get('stream') !== '0',
  baggage: params.get('baggage') === '1',
};
const config = window.DEMO_CONFIG;
// State the browser tests read: chats[i] = {sessionId, chunks, text, status, done, error}.
window.demo = { options, ready: false, chats: [], chat };

const $ = (selector) => document.querySelector(selector);

function loadRum(version) {
  return new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = `/rum/${version}/datadog-rum.js`;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`cannot load RUM SDK v${version}: run npm ci in examples/demo/web`));
    document.head.append(script);
  });
}

function initRum() {
  const init = {
    applicationId: config.rum.applicationId,
    clientToken: config.rum.clientToken,
    site: config.rum.site,
    service: 'rum-llmobs-demo',
    env: 'demo',
    sessionSampleRate: 100,
    sessionReplaySampleRate: 0,
    trackResources: true,
    trackUserInteractions: true,
  };
  if (config.rum.intake) init.proxy = config.rum.intake; // RUM events stay on this machine
  if (options.tracing) {
    // Trace headers (and, in v7 by default, `baggage: session.id=...`) on requests to the agent.
    init.allowedTracingUrls = [`${location.origin}/chat`];
    init.traceSampleRate = 100;
    if (options.baggage) init.propagateTraceBaggage = true;
  }
  if (options.persistence !== 'cookie') init.sessionPersistence = options.persistence;
  window.DD_RUM.init(init);
}

function rumSessionId() {
  const context = window.DD_RUM.getInternalContext();
  return context ? context.session_id : undefined;
}

function addMessage(role, text, meta = '') {
  const element = document.createElement('div');
  element.className = `message ${role}`;
  const body = document.createElement('span');
  const small = document.createElement('span');
  body.textContent = text;
  small.className = 'meta';
  small.textContent = meta;
  element.append(body, small);
  $('#messages').append(element);
  $('#messages').scrollTop = $('#messages').scrollHeight;
  return { body, meta: small };
}

async function chat(message) {
  const sessionId = rumSessionId();
  const record = { message, sessionId, chunks: [], text: '', status: null, done: false, error: null };
  window.demo.chats.push(record);
  addMessage('user', message, `RUM session ${sessionId}, sent via: ${options.send === 'none' ? 'nothing (cookie / baggage)' : options.send}`);
  const answer = addMessage('assistant', '…');

  let url = '/chat';
  const body = { message, stream: options.stream };
  if (options.send === 'query') url += `?session_id=${encodeURIComponent(sessionId)}`;
  if (options.send === 'body') body.session_id = sessionId; // the Datadog guide's way
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    record.status = response.status;
    if (options.stream) {
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const text = decoder.decode(value, { stream: true });
        record.chunks.push(text); // one entry per network read: the test asserts the answer came in pieces
        record.text += text;
        answer.body.textContent = record.text;
      }
    } else {
      record.text = (await response.json()).answer;
      record.chunks.push(record.text);
      answer.body.textContent = record.text;
    }
    answer.meta.textContent = `HTTP ${record.status}, ${record.chunks.length} chunk(s)`;
  } catch (error) {
    record.error = String(error);
    answer.body.textContent = `error: ${error}`;
  } finally {
    record.done = true;
    refreshPanels();
  }
  return record;
}

async function getJson(path) {
  if (!config.consoleUrl) return null;
  const response = await fetch(config.consoleUrl + path);
  return response.ok ? response.json() : null;
}

function renderSpans(result, sessionId) {
  const tbody = $('#spans tbody');
  tbody.replaceChildren();
  if (!result) return;
  if (result.note) $('#spans-summary').textContent = result.note;
  if (!result.spans.length) return;
  for (const span of result.spans.slice(0, 15)) {
    const row = tbody.insertRow();
    row.insertCell().textContent = span.name;
    row.insertCell().textContent = span.kind || '';
    const cell = row.insertCell();
    cell.textContent = span.session_id || '(none)';
    cell.className = `session ${span.session_id === sessionId ? 'match' : 'mismatch'}`;
  }
  const matching = result.spans.filter((span) => span.session_id === sessionId).length;
  const summary = $('#spans-summary');
  summary.textContent = `${matching} span(s) carry this browser's RUM session ID (newest first, all sessions listed).`;
  summary.className = matching ? 'ok' : '';
}

async function refreshPanels() {
  const sessionId = rumSessionId();
  $('#rum-session-id').textContent = sessionId || '(no session)';
  try {
    const [rum, spans] = await Promise.all([getJson('/api/rum'), getJson('/api/spans')]);
    if (rum) {
      const ids = rum.session_ids.length ? rum.session_ids.join(', ') : '—';
      $('#rum-events').textContent = `${rum.events} events, session.id: ${ids}`;
    } else if (!config.consoleUrl || !config.rum.intake) {
      $('#rum-events').textContent = 'sent to Datadog';
    }
    renderSpans(spans, sessionId);
  } catch (error) {
    $('#spans-summary').textContent = `console unreachable: ${error}`;
  }
}

async function start() {
  await loadRum(options.rum);
  initRum();
  $('#rum-version').textContent = `@datadog/browser-rum ${window.DD_RUM.version}`;
  $('#send-mode').value = options.send;
  $('#send-mode').addEventListener('change', (event) => { options.send = event.target.value; });
  $('#chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const message = $('#message').value.trim();
    if (!message) return;
    $('#message').value = '';
    chat(message);
  });
  $('#send').disabled = false;
  window.demo.ready = true;
  await refreshPanels();
  setInterval(refreshPanels, 2000);
}

start().catch((error) => {
  window.demo.error = String(error);
  $('#rum-version').textContent = String(error);
});
