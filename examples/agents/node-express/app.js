'use strict'
// Example agent: express under `node --require dd-trace/init` with DD_LLMOBS_ENABLED=1. No session code:
// dd-trace-js takes the session from the `_dd.p.llmobs_sid` the proxy propagates in x-datadog-tags.
//   POST /chat     {message, stream}: the `openai` client inside an llmobs workflow (+ a tool span)
//   POST /chat/ai  {message, stream}: the Vercel AI SDK, generateText or streamText
//   GET  /healthz

const express = require('express')
const { llmobs } = require('dd-trace')
const OpenAI = require('openai')
const { generateText, streamText } = require('ai')
const { createOpenAI } = require('@ai-sdk/openai')

const MODEL = process.env.AGENT_MODEL || 'fake-gpt'
const SYSTEM = 'You are a helpful shop assistant.'
const client = new OpenAI() // OPENAI_BASE_URL, OPENAI_API_KEY
const provider = createOpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.OPENAI_API_KEY })

function lookupFaq (question) {
  return llmobs.trace({ kind: 'tool', name: 'lookup_faq' }, () =>
    question.toLowerCase().includes('ship') ? 'Shipping takes 3 days.' : 'No FAQ entry.')
}

function messagesFor (message) {
  return [{ role: 'system', content: `${SYSTEM} ${lookupFaq(message)}` }, { role: 'user', content: message }]
}

const app = express()
app.use(express.json())

app.get('/healthz', (req, res) => res.json({ status: 'ok' }))

app.post('/chat', (req, res, next) => {
  const { message, stream } = req.body
  llmobs.trace({ kind: 'workflow', name: 'chat' }, async () => {
    const messages = messagesFor(message)
    if (!stream) {
      const completion = await client.chat.completions.create({ model: MODEL, messages })
      res.json({ answer: completion.choices[0].message.content || '' })
      return
    }
    res.type('text/plain')
    const chunks = await client.chat.completions.create({ model: MODEL, messages, stream: true })
    for await (const chunk of chunks) {
      const text = chunk.choices[0]?.delta?.content
      if (text) res.write(text)
    }
    res.end()
  }).catch(next)
})

app.post('/chat/ai', (req, res, next) => {
  const { message, stream } = req.body
  llmobs.trace({ kind: 'workflow', name: 'chat_ai' }, async () => {
    const [system, user] = messagesFor(message)
    const request = { model: provider.chat(MODEL), system: system.content, prompt: user.content }
    if (!stream) {
      const { text } = await generateText(request)
      res.json({ answer: text })
      return
    }
    res.type('text/plain')
    for await (const text of streamText(request).textStream) res.write(text)
    res.end()
  }).catch(next)
})

const port = Number(process.env.PORT || 8005)
app.listen(port, process.env.HOST || '127.0.0.1')
