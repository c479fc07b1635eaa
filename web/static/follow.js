// What the live pages share (batch.js, job.js; docs/live.md): following a Server-Sent Events
// stream, and polling the JSON API as the fallback when there is no stream or it fails.

// Poll `url` every `intervalMs`: `onData` renders what came back and answers true when there is
// no need to poll further; a failed request (server restarting) is simply tried again.
window.pixelmillPoller = function (url, intervalMs, onData) {
  let polling = false;
  return function poll() {
    if (polling) return;
    polling = true;
    (async function tick() {
      try {
        const response = await fetch(url, { headers: { Accept: 'application/json' } });
        if (response.ok && onData(await response.json())) { polling = false; return; }
      } catch (e) { /* server restarting: keep trying */ }
      setTimeout(tick, intervalMs);
    })();
  };
};

// Follow the stream at `url`: each event goes to its handler (parsed); `main` is the event
// that proves the stream works. A stream ended early is followed on with a fresh snapshot; one
// that keeps failing falls back to `poll` unless `isOver()`; `onFinished` runs at the real end.
window.pixelmillFollow = function (url, { main, handlers, poll, isOver, onFinished }) {
  function live() {
    let source;
    try {
      source = new EventSource(url);
    } catch (e) {
      poll();
      return;
    }
    let heard = false;
    let failures = 0;
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (e) => {
        if (name === main) { heard = true; failures = 0; }
        handle(JSON.parse(e.data));
      });
    }
    source.addEventListener('end', (e) => {
      source.close();  // or EventSource would reconnect
      if (JSON.parse(e.data).reason !== 'finished') setTimeout(live, 500);  // the server ends long streams
      else if (onFinished) onFinished();
    });
    source.onerror = () => {
      // CLOSED: refused (404, 503, not an event stream); CONNECTING: the browser retries by itself
      failures += 1;
      if (source.readyState === EventSource.CLOSED || (!heard && failures >= 2) || failures >= 5) {
        source.close();
        if (!isOver()) poll();
      }
    };
    window.addEventListener('pagehide', () => source.close());
  }
  live();
};
