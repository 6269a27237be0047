-- A short wait per tenant in front of its share of requests in flight.
--
-- Rendered into nginx.conf by resnet18_triton.deploy.proxy (init_by_lua_block), which makes this
-- chunk's value the global `tenant_queue` and sets its numbers there (shares: each key weight's
-- share, from proxy.Limits.tenant_in_flight, as nginx's limit_conn caps are; wait_s: the
-- proxy's Retry-After).
--
-- tenant_queue.admit(): in the access phase of every request with a valid key that goes to
-- Triton. A request within its key's share (the share of its weight) goes on at once. One over
-- it waits for one of its key's slots for up to wait_s, then gets the 429 it would have had at
-- once: a tenant's burst is smoothed instead of refused, and a refused caller waits no longer
-- than its Retry-After would have made it. How many requests of a key may wait is bounded
-- before this runs, by nginx's limit_conn on the key.
-- tenant_queue.release(): in the log phase of every request; frees the slot it took, if any.
--
-- The counts live in the shared dict `tenant_slots`, so every worker sees the same ones. The
-- slot a request holds is kept in the variable $tenant_slot, which (unlike ngx.ctx) survives
-- the internal redirects of error pages and canary routing, so a slot is always freed.

local M = { shares = {}, wait_s = 1 }

-- The first pause is short (a photo takes tens of milliseconds), the longest 20 ms: a waiting
-- request costs a timer, not a core.
local FIRST_PAUSE_S = 0.002
local LONGEST_PAUSE_S = 0.02

-- "name:weight" (or "name", weight 1) from the key map -> name, share; nil for no key. A weight
-- without a share (the key file allows none) gets none: its requests wait, then get the 429.
local function share_of(entry)
  local name, weight = entry:match("^([^:]+):?(%d*)$")
  if name == nil then
    return nil, 0
  end
  return name, M.shares[tonumber(weight) or 1] or 0
end

-- Takes one of name's slots if fewer than share are taken; true when it did.
local function take(slots, name, share)
  local taken = slots:incr(name, 1, 0)
  if taken == nil then
    return false  -- the dict is full: no slot can be counted, so none is given
  end
  if taken <= share then
    return true
  end
  slots:incr(name, -1)
  return false
end

function M.admit()
  local name, share = share_of(ngx.var.api_key_entry or "")
  if name == nil then
    return
  end
  local slots = ngx.shared.tenant_slots
  local deadline = ngx.now() + M.wait_s
  local pause = FIRST_PAUSE_S
  while not take(slots, name, share) do
    ngx.update_time()
    if ngx.now() + pause > deadline then
      return ngx.exit(429)
    end
    ngx.sleep(pause)
    pause = math.min(2 * pause, LONGEST_PAUSE_S)
  end
  ngx.var.tenant_slot = name
end

function M.release()
  local name = ngx.var.tenant_slot
  if name ~= nil and name ~= "" then
    ngx.shared.tenant_slots:incr(name, -1)
    ngx.var.tenant_slot = ""
  end
end

return M
