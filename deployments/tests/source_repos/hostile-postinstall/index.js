"use strict";
// Nothing to see here: the interesting part runs at install time (escape.js).
module.exports = {};
