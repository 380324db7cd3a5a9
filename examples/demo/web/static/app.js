// Chat page of the demo: starts the real Datadog RUM SDK, chats with the agent through the proxy (streamed),
// and shows the browser's RUM session next to the session_id of the agent's LLM Observability spans.
//
// Per chat request it also shows where the proxy found the session ID (its `request` log line's
// `session_source`, read back through the console), so a visitor can try the five carriers.
//
// URL options (the browser tests use them): rum=5|6|7, send=none|body|query|header, tracing=1|0,
// persistence=cookie|local-storage, stream=1|0, baggage=1 (propagateTraceBaggage: opt-in in v6, default in v7).
'use strict';

const params = new URLSearchParams(location.search);
const options = {
  rum: ['5', '6', '7'].includes(params.get('rum')) ? params.get('rum') : '7',
  send: ['none', 'body', 'query', 'header'].includes(params.get('send')) ? params.get('send') : 'none',
  tracing: params.get('tracing') !== '0',
  persistence: params.get('persistence') || 'cookie',
  stream: params.get('stream') !== '0',
  baggage: params.get('baggage') === '1',
};
const config = window.DEMO_CONFIG;
// State the browser tests read: chats[i] = {sessionId, requestId, chunks, text, status, done, error, proxy},
// proxy = the proxy's request line for it ({session_source, session_id, status, ...}) once matched.
window.demo = { options, ready: false, chats: [], chat, flushRum };
// The proxy's own name for where it found the ID, and what that means for the visitor.
const CARRIERS = {
  body: 'the JSON body (session_id)',
  query: 'the query (?session_id=)',
  header: 'the x-rum-session-id header',
  baggage: 'the W3C baggage header (session.id), sent by the RUM SDK',
  cookie: "the RUM SDK's session cookie",
  none: 'nowhere: no valid session ID in the request',
};
const SENT = {
  none: 'page sent nothing itself (the SDK\'s cookie or baggage may carry it)',
  body: 'page sent it in the JSON body',
  query: 'page sent it in the query',
  header: 'page sent it in the x-rum-session-id header',
};

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

function newRequestId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID(); // secure contexts (127.0.0.1 is one)
  return `${Date.now().toString(16)}-${Math.random().toString(16).slice(2)}`;
}

// Hiding the page is one of the moments the SDK sends its batch (with every 30 s and every 50 events).
function flushRum() {
  Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
  document.dispatchEvent(new Event('visibilitychange'));
  delete document.visibilityState;
  setTimeout(refreshPanels, 500);
}

function rumSessionId() {
  const context = window.DD_RUM.getInternalContext();
  return context ? context.session_id : undefined;
}

// The SDK reports its session a moment after init(): until it does (or 10 s passed: a session not tracked), the
// page says it is starting rather than "(no session)", and the chat waits for the ID it sends.
let sessionSettled = false;
async function waitForSession(within = 10000) {
  const deadline = Date.now() + within;
  while (!rumSessionId() && Date.now() < deadline) {
    await new Promise((resolve) => { setTimeout(resolve, 50); });
  }
  sessionSettled = true;
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

function describeProxy(record) {
  if (!record.proxy) return `${SENT[record.send]} · proxy: waiting for its log line…`;
  const { session_source: source, session_id: id } = record.proxy;
  const found = source === 'none' ? CARRIERS.none : `took it from ${CARRIERS[source] || source}`;
  const same = source !== 'none' && id !== record.sessionId ? ` (${id}: not this page's session)` : '';
  return `${SENT[record.send]} · proxy ${found}${same}`;
}

async function chat(message) {
  const sessionId = rumSessionId();
  const requestId = newRequestId();
  const record = {
    message, sessionId, requestId, send: options.send, chunks: [], text: '', status: null, done: false,
    error: null, proxy: null, sentAt: Date.now(), doneAt: null,
  };
  window.demo.chats.push(record);
  record.view = addMessage('user', message, describeProxy(record));
  const answer = addMessage('assistant', '…');

  let url = '/chat';
  const body = { message, stream: options.stream };
  // X-Request-ID lets the page find this request's line in the proxy's log, once the proxy logs it.
  const headers = { 'Content-Type': 'application/json', 'X-Request-ID': requestId };
  if (options.send === 'query') url += `?session_id=${encodeURIComponent(sessionId)}`;
  if (options.send === 'body') body.session_id = sessionId; // the Datadog guide's way
  if (options.send === 'header') headers['x-rum-session-id'] = sessionId;
  try {
    const response = await fetch(url, { method: 'POST', headers, body: JSON.stringify(body) });
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
    record.doneAt = Date.now();
    refreshPanels();
  }
  return record;
}

// Pair each finished chat with the proxy's `request` line for it: by request_id when the proxy logs one,
// else by time: the request the proxy saw started after the page sent it and ended before the page's last
// read (one clock: the same machine), preferring a line with this page's session.
const claimed = new Set();
const START_SLACK_MS = 250;
const END_SLACK_MS = 1500;
const lineKey = (line) => `${line.time_ms}|${line.duration_ms}|${line.session_id}`;

function withinChat(line, record) {
  if (line.time_ms === null || line.time_ms === undefined) return false;
  const started = line.time_ms - (line.duration_ms || 0);
  return started >= record.sentAt - START_SLACK_MS && line.time_ms <= record.doneAt + END_SLACK_MS;
}

function matchProxyRequests(result) {
  if (!result || !result.requests) return;
  if (result.available === false) {
    for (const record of window.demo.chats.filter((r) => !r.proxy)) {
      record.view.meta.textContent = `${SENT[record.send]} · proxy log not available here`;
    }
    return;
  }
  const lines = result.requests.filter((line) => line.method === 'POST' && line.path === '/chat');
  for (const record of window.demo.chats) {
    if (record.proxy || !record.done) continue;
    let line = lines.find((l) => l.request_id && l.request_id === record.requestId);
    if (!line) {
      const candidates = lines.filter((l) => !l.request_id && !claimed.has(lineKey(l)) && withinChat(l, record));
      line = candidates.find((l) => l.session_id === record.sessionId) || candidates[0];
    }
    if (!line) continue;
    claimed.add(lineKey(line));
    record.proxy = line;
    record.view.meta.textContent = describeProxy(record);
    record.view.meta.dataset.sessionSource = line.session_source;
  }
}

async function getJson(path) {
  if (!config.consoleUrl) return null;
  const response = await fetch(config.consoleUrl + path);
  return response.ok ? response.json() : null;
}

function spanRows(tbody, spans, label) {
  tbody.replaceChildren();
  for (const span of spans) {
    const row = tbody.insertRow();
    row.insertCell().textContent = span.name;
    row.insertCell().textContent = span.kind || '';
    const cell = row.insertCell();
    cell.textContent = span.session_id || '(no session_id)';
    cell.className = `session ${label(span)}`;
  }
}

// This browser session's spans first; spans of earlier sessions (other tabs, earlier visits) apart and
// labelled as such: they are not errors, they belong to someone else's session.
function renderSpans(result, sessionId) {
  if (!result) return;
  const summary = $('#spans-summary');
  const current = result.spans.filter((span) => span.session_id && span.session_id === sessionId);
  const earlier = result.spans.filter((span) => !(span.session_id && span.session_id === sessionId));
  spanRows($('#spans tbody'), current.slice(0, 15), () => 'match');
  spanRows($('#earlier-spans tbody'), earlier.slice(0, 15), (span) => (span.session_id ? 'earlier' : 'unset'));
  $('#earlier').hidden = earlier.length === 0;
  $('#earlier-count').textContent = `${earlier.length} span(s) of earlier sessions`;
  if (result.note) {
    summary.textContent = result.note;
  } else if (current.length) {
    summary.textContent = `${current.length} span(s) carry this browser's RUM session ID (newest first).`;
  } else {
    summary.textContent = 'No span of this browser session yet: send a message.';
  }
  summary.className = current.length ? 'ok' : '';
}

function describeTypes(byType) {
  return Object.entries(byType).map(([type, count]) => `${count} ${type}`).join(', ');
}

// Only this session's events; the SDK batches them, so they arrive in bursts.
function renderRum(rum, sessionId) {
  const pending = 'The SDK batches events: it sends them every 30 s, after 50 events, or when the tab is hidden.';
  if (!rum) {
    $('#rum-events').textContent = !config.consoleUrl || !config.rum.intake ? 'sent to Datadog' : '—';
    return;
  }
  const current = rum.current || { events: 0, by_type: {} };
  $('#rum-events').textContent = current.events
    ? `${current.events} events of this session (${describeTypes(current.by_type)}), session.id ${sessionId}`
    : `none of this session yet. ${pending}`;
  $('#rum-pending').hidden = current.events > 0;
  const earlier = rum.earlier || { sessions: 0, events: 0 };
  $('#rum-earlier').textContent = earlier.sessions
    ? `${earlier.events} more from ${earlier.sessions} earlier session(s), not counted here.` : '';
}

async function refreshPanels() {
  const sessionId = rumSessionId();
  $('#rum-session-id').textContent = sessionId || (sessionSettled ? '(no session)' : 'starting…');
  try {
    const rumPath = `/api/rum?session_id=${encodeURIComponent(sessionId || '')}`;
    const [rum, spans, proxied] = await Promise.all([
      getJson(rumPath), getJson('/api/spans'), getJson('/api/proxy-requests'),
    ]);
    renderRum(rum, sessionId);
    renderSpans(spans, sessionId);
    matchProxyRequests(proxied);
  } catch (error) {
    $('#spans-summary').textContent = `console unreachable: ${error}`;
  }
}

async function start() {
  await loadRum(options.rum);
  initRum();
  $('#rum-version').textContent = `@datadog/browser-rum ${window.DD_RUM.version}`;
  await waitForSession();
  $('#rum-session-id').textContent = rumSessionId() || '(no session)';
  $('#send-mode').value = options.send;
  $('#send-mode').addEventListener('change', (event) => { options.send = event.target.value; });
  $('#flush-rum').addEventListener('click', flushRum);
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
