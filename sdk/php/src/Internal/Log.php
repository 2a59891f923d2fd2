<?php

declare(strict_types=1);

namespace Hotsock\Internal;

/**
 * The SDK's log: one line per call on stderr, which the server prefixes with
 * the worker's slot, generation and pid and keeps for error reports.
 */
final class Log
{
    public static function line(string $text): void
    {
        // One write per line, so lines of one worker never interleave.
        fwrite(STDERR, 'hotsock-php: ' . str_replace("\n", ' | ', rtrim($text)) . "\n");
    }
}
