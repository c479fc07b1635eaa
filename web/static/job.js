// Live job page: polls the JSON API until the job reaches a terminal state.
(function () {
  const root = document.getElementById('job');
  const TERMINAL = ['succeeded', 'failed', 'blocked', 'canceled'];
  const $ = (id) => document.getElementById(id);

  function render(job) {
    const status = $('status');
    status.textContent = job.status + (job.stage ? ' · ' + job.stage : '');
    status.className = 'pill status-' + job.status;
    for (const [name, stage] of Object.entries(job.stages)) {
      const li = document.querySelector(`.stage[data-stage="${name}"]`);
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
    const progress = $('progress');
    if (job.progress && job.progress.steps) {
      progress.hidden = false;
      progress.querySelector('.bar').style.width = (100 * job.progress.step / job.progress.steps) + '%';
      progress.querySelector('.label').textContent = `step ${job.progress.step}/${job.progress.steps}`;
    } else {
      progress.hidden = true;
    }
    if (job.error) { $('error').hidden = false; $('error').textContent = job.error.message; }
    if (job.audit) {
      $('audit').hidden = false;
      const score = job.audit.scores ? [`NSFW score ${job.audit.scores.nsfw.toFixed(3)} (${job.audit.model})`] : [];
      $('audit').innerHTML = 'Audit: <strong></strong>';
      $('audit').append([...score, ...(job.audit.reasons || [])].map(r => ' · ' + r).join(''));
      $('audit').querySelector('strong').textContent = job.audit.verdict;
    }
    if (job.links.result) {
      $('result').src = job.links.result;
      $('download').href = job.links.result + '?download=1';
      $('result-figure').hidden = false;
    }
    $('waiting').hidden = TERMINAL.includes(job.status);
    const cancel = $('cancel-form');
    if (cancel) cancel.hidden = TERMINAL.includes(job.status);
    renderDeliveries(job.deliveries || []);
  }

  // Webhook deliveries: refreshed while the job runs and while any is still pending.
  function renderDeliveries(deliveries) {
    const body = $('deliveries-body');
    if (!body || !deliveries.length) return;
    $('deliveries').hidden = false;
    const known = new Set();
    for (const d of deliveries) {
      known.add(d.id);
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
  let settledPolls = 0;

  async function poll() {
    try {
      const response = await fetch(root.dataset.api, { headers: { Accept: 'application/json' } });
      if (response.ok) {
        const job = await response.json();
        render(job);
        // after the end, keep watching a little: the final event's delivery follows the job's end
        if (TERMINAL.includes(job.status) && !hasPending(job) && ++settledPolls > 5) return;
      }
    } catch (e) { /* server restarting: keep trying */ }
    setTimeout(poll, 700);
  }
  if (!TERMINAL.includes(root.dataset.status) || document.querySelector('#deliveries-body .delivery-pending')) poll();
})();
