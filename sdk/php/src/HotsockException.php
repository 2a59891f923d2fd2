<?php

declare(strict_types=1);

namespace Hotsock;

/** Base of every exception the SDK throws. */
class HotsockException extends \RuntimeException
{
}
