// The dev server tests/vite.rs runs behind a private preview. Nothing here is specific to Portico
// except the request log: `*.localhost` preview hosts are accepted by Vite's default `allowedHosts`.
//
//   PORTICO_VITE_ROOT         the app to serve (a temp copy of ./app, so the test can edit it)
//   PORTICO_VITE_REQUEST_LOG  a file that gets one JSON line per request, upgrade and HMR connection
import { appendFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vite'

const root = process.env.PORTICO_VITE_ROOT ?? fileURLToPath(new URL('./app', import.meta.url))
const logFile = process.env.PORTICO_VITE_REQUEST_LOG

function requestLog() {
  const log = (kind, req) => {
    if (logFile) appendFileSync(logFile, JSON.stringify({ kind, url: req.url, headers: req.headers }) + '\n')
  }
  return {
    name: 'portico-request-log',
    configureServer(server) {
      // On the HTTP server itself, ahead of Vite's own listener, rather than as a middleware: requests Vite
      // refuses before any plugin middleware runs (its host check answers 403) are logged too, and the
      // URL is logged as it arrived, before Vite rewrites it (`/` → `/index.html`).
      server.httpServer?.prependListener('request', (req) => log('request', req))
      // Every upgrade attempt, accepted or not; and every HMR socket Vite accepted (it answered 101).
      server.httpServer?.prependListener('upgrade', (req) => log('upgrade', req))
      server.ws.on('connection', (_socket, req) => log('hmr-connected', req))
    },
  }
}

export default defineConfig({
  root,
  cacheDir: `${root}/.vite`,
  clearScreen: false,
  plugins: [requestLog()],
})
