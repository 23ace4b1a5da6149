"""The web page at ``/``: one static HTML page whose script polls ``/v1/spoolbatch/status``."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>spoolbatch</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4}.bar{background:#eee;width:10em;height:.8em;display:inline-block}
.bar i{background:#3a7;height:100%;display:block}#err{color:#b00}code{font-size:12px}
</style></head><body>
<h1>spoolbatch</h1><p id="err"></p>
<h2>Workers</h2><table id="workers"><thead><tr><th>worker</th><th>liveness</th><th>state</th><th>job</th>
<th>GPU</th><th>last seen</th></tr></thead><tbody></tbody></table>
<h2>Queue</h2><p id="queue">-</p>
<h2>Jobs</h2><table id="jobs"><thead><tr><th>job</th><th>batch</th><th>status</th><th>progress</th>
<th>done</th><th>failed</th><th>tokens</th><th>ETA</th><th>metadata</th></tr></thead><tbody></tbody></table>
<p><small>Refreshes every 2 s. <span id="updated"></span></small></p>
<script>
function esc(s){return String(s==null?"":s).replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",
'"':"&quot;","'":"&#39;"}[c]))}
function dur(s){if(s==null)return "-";s=Math.round(s);return s<60?s+"s":s<3600?Math.floor(s/60)+"m"+(s%60)+"s":
Math.floor(s/3600)+"h"+Math.floor(s%3600/60)+"m"}
function gpu(g){if(!g)return "-";if(g.devices&&g.devices.length)return g.devices.map(d=>"GPU "+d.index+" "+
(d.memory_pct||0).toFixed(0)+"% "+(d.temperature_c==null?"":d.temperature_c+"°C")).join(", ");return g.reason||"none"}
if(location.hash.startsWith("#key=")){localStorage.setItem("spoolbatch_key",location.hash.slice(5));
history.replaceState(null,"",location.pathname)}
async function refresh(){
  const key=localStorage.getItem("spoolbatch_key");
  try{
    const r=await fetch("v1/spoolbatch/status",{headers:key?{"Authorization":"Bearer "+key}:{}});
    if(r.status==401){const k=prompt("API key");if(k){localStorage.setItem("spoolbatch_key",k)};return}
    const d=await r.json();document.getElementById("err").textContent="";
    document.querySelector("#workers tbody").innerHTML=d.workers.map(w=>"<tr class='worker'><td>"+esc(w.worker)+
      "</td><td>"+esc(w.liveness)+"</td><td>"+esc(w.state)+(w.reason?" ("+esc(w.reason)+")":"")+"</td><td>"+
      esc(w.job||"-")+"</td><td>"+esc(gpu(w.gpu))+"</td><td>"+esc(w.age_seconds)+"s ago</td></tr>").join("")||
      "<tr><td colspan=6>no worker has run on this spool</td></tr>";
    document.getElementById("queue").textContent=d.queue.jobs+" job(s) waiting; "+
      Object.entries(d.queue.by_status).map(([k,v])=>v+" "+k).join(", ");
    document.querySelector("#jobs tbody").innerHTML=d.jobs.slice().reverse().map(j=>"<tr class='job' data-job='"+
      esc(j.job)+"'><td>"+esc(j.job)+"</td><td><code>"+esc(j.batch)+"</code></td><td class='status'>"+
      esc(j.status)+"</td><td><span class='bar'><i style='width:"+(100*j.progress).toFixed(1)+"%'></i></span> "+
      "<span class='pct'>"+
      (100*j.progress).toFixed(1)+"%</span></td><td>"+j.requests_done+"</td><td>"+j.requests_failed+"</td><td>"+
      j.tokens+"</td><td>"+(j.status=="running"?dur(j.eta_seconds):"-")+"</td><td>"+
      esc(j.metadata?Object.entries(j.metadata).map(([k,v])=>k+"="+v).join(" "):"")+"</td></tr>").join("");
    document.getElementById("updated").textContent="Updated "+new Date().toLocaleTimeString()+".";
    document.body.dataset.loaded="1";
  }catch(e){document.getElementById("err").textContent="cannot reach the server: "+e}
}
refresh();setInterval(refresh,2000);
</script></body></html>
"""
