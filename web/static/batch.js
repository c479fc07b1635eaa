// Live batch page (docs/live.md): one Server-Sent Events stream for the whole batch
// (#batch[data-events]). `batch` events update the counts, `job` events a member's tile,
// `progress` its badge ("generating · 3/20"), `preview` its picture while it generates.
// Without EventSource, or when the stream fails, it polls the JSON API (#batch[data-api]).
(function () {
  const root = document.getElementById('batch');
  const TERMINAL = ['succeeded', 'failed', 'blocked', 'canceled'];
  const $ = (id) => document.getElementById(id);
  const statuses = {};  // job id -> last status seen
  // widths come as data-width: the CSP (web/auth.py) refuses inline style attributes, not script
  for (const bar of root.querySelectorAll('.bar[data-width]')) bar.style.width = bar.dataset.width + '%';

  const tileOf = (jobId) => document.querySelector(`a.tile[href$="/jobs/${jobId}"]`);

  function renderBatch(batch) {
    $('batch-status').textContent = `${batch.done}/${batch.total} done`;
    $('batch-bar').style.width = (batch.total ? 100 * batch.done / batch.total : 0) + '%';
    $('batch-counts').textContent = Object.entries(batch.counts).map(([k, v]) => `${v} ${k}`).join(' · ');
    root.dataset.status = batch.status;
    for (const job of batch.jobs || []) renderJob(job);
  }

  function renderJob(job) {
    statuses[job.id] = job.status;
    const tile = tileOf(job.id);
    if (!tile) return;
    tile.className = 'tile status-' + job.status;
    tile.querySelector('.badge').textContent = job.status;
    const img = tile.querySelector('img');
    if (job.status === 'succeeded' && job.links.result) {
      img.src = job.links.result;
      img.classList.remove('faded');
    } else if (TERMINAL.includes(job.status) && img.dataset.preview) {
      img.src = job.links.input;  // ended without a result: back to the input
      img.classList.add('faded');
    }
    delete img.dataset.preview;
  }

  function renderProgress(p) {
    if (TERMINAL.includes(statuses[p.job_id])) return;
    const tile = tileOf(p.job_id);
    if (tile) tile.querySelector('.badge').textContent = `${statuses[p.job_id] || p.stage} · ${p.step}/${p.steps}`;
  }

  function renderPreview(p) {
    if (TERMINAL.includes(statuses[p.job_id])) return;
    const tile = tileOf(p.job_id);
    if (!tile) return;
    const img = tile.querySelector('img');
    img.src = p.url;
    img.dataset.preview = '1';
    img.style.imageRendering = 'pixelated';
    img.classList.remove('faded');
  }

  const poll = window.pixelmillPoller(root.dataset.api, 1500, (batch) => {
    renderBatch(batch);
    return batch.status === 'done';
  });

  if (root.dataset.status === 'done') return;
  if (window.EventSource && root.dataset.events) {
    window.pixelmillFollow(root.dataset.events, {
      main: 'batch', poll, isOver: () => root.dataset.status === 'done',
      handlers: { batch: renderBatch, job: renderJob, progress: renderProgress, preview: renderPreview },
    });
  } else poll();
})();
