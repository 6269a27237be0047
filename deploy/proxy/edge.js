// The proxy's njs script (resnet18_triton/deploy/edge.js); deployments get a copy
// (python -m resnet18_triton.deploy.render): edit this file, then re-render.
const crypto = require('crypto');
const fs = require('fs');

// The SHA-256 of the bearer token, for nginx's map of key hashes -> key names; "" if none.
function bearerKeyHash(r) {
    const header = r.headersIn['Authorization'];
    if (!header) {
        return '';
    }
    const match = /^Bearer +([^ ]+) *$/i.exec(header);
    if (!match) {
        return '';
    }
    return crypto.createHash('sha256').update(match[1]).digest('hex');
}

// Canaries (resnet18_triton.repository.versions): while one runs, the model repository holds
// MODEL_canary, an ensemble of the new version, whose config names the share of MODEL's
// inference requests it takes. The share is read here on every request, so a canary starts,
// changes and ends without a reload. No readable share (no canary, or its config being
// replaced) is 0: the request goes to the model it names.
const CANARY_SUFFIX = '_canary';
const SHARE = /key: *"canary_percent"[^}]*string_value: *"([0-9]+)"/;
const MODEL_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/;

function canaryShare(repository, canary) {
    try {
        // Listing the repository first: a failed open costs njs hundreds of microseconds, and
        // most requests are for classifiers without a canary.
        if (fs.readdirSync(repository).indexOf(canary) < 0) {
            return 0;
        }
        const config = fs.readFileSync(repository + '/' + canary + '/config.pbtxt', 'utf8');
        const match = SHARE.exec(config);
        return match ? Number(match[1]) : 0;
    } catch (e) {
        return 0;
    }
}

// The model an inference request for $canary_model goes to: its canary for the canary's share
// of requests (by the request's random id), else the model itself.
function routedModel(r) {
    const model = r.variables.canary_model;
    if (!MODEL_NAME.test(model)) {
        return model;
    }
    const canary = model + CANARY_SUFFIX;
    const share = canaryShare(r.variables.canary_repository, canary);
    if (share <= 0) {
        return model;
    }
    const bucket = parseInt(r.variables.request_id.slice(0, 8), 16) % 100;
    return bucket < share ? canary : model;
}

export default {bearerKeyHash, routedModel};
