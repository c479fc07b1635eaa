// Live job page (docs/live.md). Follows the job over Server-Sent Events (#job[data-events]):
// `job` events re-render the page, `progress` moves the bar, `preview` shows the latest preview
// image while it generates, `end` closes the stream. Where EventSource is missing or the
// stream fails, it polls the JSON API (#job[data-api]) instead, as before.
(function () {
  const root = document.getElementById('job');
  const TERMINAL = ['succeeded', 'failed', 'blocked', 'canceled'];
  const $ = (id) => document.getElementById(id);
  // the quality scores as job.html's quality_scores macro writes them
  const qualityScores = (s) => [s.clipscore !== undefined && `CLIPScore ${s.clipscore.toFixed(2)}`,
    s.sharpness !== undefined && `sharpness ${s.sharpness.toFixed(1)}`,
    s.phash_distance !== undefined && `pHash distance ${Math.trunc(s.phash_distance)}`].filter(Boolean);
  let current = { status: root.dataset.status };
  // widths come as data-width: the CSP (web/auth.py) refuses inline style attributes, not script
  for (const bar of root.querySelectorAll('.bar[data-width]')) bar.style.width = bar.dataset.width + '%';

  function render(job) {
    current = job;
    const status = $('status');
    status.textContent = job.status + (job.stage ? ' · ' + job.stage : '');
    status.className = 'pill status-' + job.status;
    for (const [name, stage] of Object.entries(job.stages)) {
      const li = document.querySelector(`.stage[data-stage="${name}"]`);
      if (!li) continue;
      li.className = 'stage state-' + stage.state;
      const parts = [];
      if (stage.seconds !== null) parts.push(stage.seconds.toFixed(2) + ' s');
      li.querySelector('.detail').textContent = parts.join(' · ');
      const badge = li.querySelector('.cache-badge');
      if (badge) {
        badge.hidden = !stage.cache_label;
        badge.textContent = stage.cache_label || '';
        badge.className = 'cache-badge' + (stage.cached ? ' served' : '');
      }
    }
    renderProgress(job.progress && job.progress.steps ? job.progress : null);
    if (job.error) { $('error').hidden = false; $('error').textContent = job.error.message; }
    if (job.audit) {
      $('audit').hidden = false;
      const score = job.audit.scores ? [`NSFW score ${job.audit.scores.nsfw.toFixed(3)} (${job.audit.model})`] : [];
      $('audit').innerHTML = 'Audit: <strong></strong>';
      $('audit').append([...score, ...qualityScores(job.audit.scores || {}), ...(job.audit.reasons || [])]
        .map(r => ' · ' + r).join(''));
      $('audit').querySelector('strong').textContent = job.audit.verdict;
    }
    renderCost(job.cost);
    if (job.links.result) {
      $('result').src = job.links.result;
      $('download').href = job.links.result + '?download=1';
      $('result-figure').hidden = false;
    }
    const ended = TERMINAL.includes(job.status);
    $('waiting').hidden = ended;
    if (ended || job.stage !== 'generate') hidePreview();
    const cancel = $('cancel-form');
    if (cancel) cancel.hidden = ended;
    if (job.deliveries) renderDeliveries(job.deliveries);
  }

  function renderProgress(progress) {
    const box = $('progress');
    if (!progress) { box.hidden = true; return; }
    box.hidden = false;
    box.querySelector('.bar').style.width = (100 * progress.step / progress.steps) + '%';
    box.querySelector('.label').textContent = `step ${progress.step}/${progress.steps}`;
  }

  function renderCost(cost) {
    const line = $('cost');
    if (!line || !cost || !Object.keys(cost.device_seconds || {}).length) return;
    const strong = line.querySelector('strong');
    if (!strong) return;
    strong.textContent = '$' + cost.usd.toFixed(6);
    // what follows the amount up to the prices link: " · cpu 1.23 s · gpu 0.50 s"
    while (strong.nextSibling && strong.nextSibling.nodeName !== 'SMALL') strong.nextSibling.remove();
    const parts = Object.entries(cost.device_seconds).map(([queue, s]) => ` · ${queue} ${s.toFixed(2)} s`);
    strong.after(document.createTextNode(parts.join('') + ' '));
    line.hidden = false;
  }

  function showPreview(preview) {
    if (TERMINAL.includes(current.status)) return;
    const img = $('preview');
    if (!img) return;
    img.style.imageRendering = 'pixelated';  // a 128-px preview, scaled up: keep its cells sharp
    img.src = preview.url;
    img.hidden = false;
    const spinner = document.querySelector('#waiting .spinner');
    if (spinner) spinner.hidden = true;
    if (preview.step && preview.steps) $('waiting-label').textContent = `Preview · step ${preview.step}/${preview.steps}`;
  }

  function hidePreview() {
    const img = $('preview');
    if (!img || img.hidden) return;
    img.hidden = true;
    const spinner = document.querySelector('#waiting .spinner');
    if (spinner) spinner.hidden = false;
    $('waiting-label').textContent = 'Working…';
  }

  // Webhook deliveries: refreshed while the job runs and while any is still pending.
  function renderDeliveries(deliveries) {
    const body = $('deliveries-body');
    if (!body || !deliveries.length) return;
    $('deliveries').hidden = false;
    for (const d of deliveries) {
      let row = body.querySelector(`tr[data-delivery="${d.id}"]`);
      if (!row) {
        row = document.createElement('tr');
        row.dataset.delivery = d.id;
        for (let i = 0; i < 8; i++) row.appendChild(document.createElement('td'));
        body.appendChild(row);
      }
      const cells = row.children;
      const cellText = [d.event, d.url, d.status, String(d.attempts), d.last_status_code ? String(d.last_status_code) : '—',
        d.last_latency_ms !== null ? Math.round(d.last_latency_ms) + ' ms' : '', d.last_error || ''];
      cellText.forEach((text, i) => { if (i !== 1) cells[i].textContent = text; });
      if (!cells[1].querySelector('code')) cells[1].appendChild(document.createElement('code'));
      cells[1].querySelector('code').textContent = d.url;
      cells[2].className = 'delivery-' + d.status;
    }
  }
  const hasPending = (job) => (job.deliveries || []).some(d => d.status === 'pending');
  const hasWebhook = (job) => !!(job.webhook || (job.deliveries || []).length
    || document.querySelector('#deliveries-body tr'));

  // Polling: the fallback, and a short watch after the end for the final webhook delivery.
  let settledPolls = 0;
  const poll = window.pixelmillPoller(root.dataset.api, 700, (job) => {
    render(job);
    // after the end, keep watching a little: the final event's delivery follows the job's end
    return TERMINAL.includes(job.status) && !hasPending(job) && ++settledPolls > 5;
  });

  function afterEnd() {
    if (hasWebhook(current)) poll();  // deliveries are not in the stream: follow them a little longer
  }

  function renderEvent(job) {
    // the snapshot carries webhook details; later job events do not: keep what the page has
    if (current.stages) job.webhook = job.webhook || current.webhook;
    render(job);
  }

  const ended = TERMINAL.includes(root.dataset.status);
  if (!ended && window.EventSource && root.dataset.events) {
    window.pixelmillFollow(root.dataset.events, {
      main: 'job', poll, isOver: () => TERMINAL.includes(current.status), onFinished: afterEnd,
      handlers: {
        job: renderEvent,
        progress: (p) => { if (!TERMINAL.includes(current.status)) renderProgress(p); },
        preview: showPreview,
      },
    });
  }
  else if (!ended || document.querySelector('#deliveries-body .delivery-pending')) poll();
})();
